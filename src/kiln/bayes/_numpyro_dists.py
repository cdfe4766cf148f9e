"""The agent's namespace of distributions: NumPyro's, and kiln's own where NumPyro has none.

`make` in each distribution's spec receives this module as `d`: `d.Normal` is NumPyro's,
`d.Censored` kiln's; `d.jnp` and `d.constraints` are there too (agent side only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as nd
from numpyro.distributions import constraints


class Censored(nd.Distribution):
    """A value at or below `lower` has log CDF(lower); at or above `upper`, log SF(upper)."""

    def __init__(self, base: nd.Distribution, lower: Any = None, upper: Any = None) -> None:
        self.base = base
        self.lower = -jnp.inf if lower is None else lower
        self.upper = jnp.inf if upper is None else upper
        batch = jax.lax.broadcast_shapes(base.batch_shape, jnp.shape(self.lower),
                                         jnp.shape(self.upper))
        super().__init__(batch_shape=batch, event_shape=())

    @property
    def support(self) -> Any:
        return self.base.support

    def sample(self, key: Any, sample_shape: tuple[int, ...] = ()) -> Any:
        x = self.base.expand(self.batch_shape).sample(key, sample_shape)
        return jnp.clip(x, self.lower, self.upper)

    def log_prob(self, value: Any) -> Any:
        lo = jnp.where(jnp.isfinite(self.lower), self.lower, 0.0)
        hi = jnp.where(jnp.isfinite(self.upper), self.upper, 0.0)
        below = jnp.log(self.base.cdf(lo))
        above = jnp.log1p(-self.base.cdf(hi))
        inside = self.base.log_prob(value)
        return jnp.where(value <= self.lower, below, jnp.where(value >= self.upper, above, inside))


class Mixture(nd.Distribution):
    """log p(x) = logsumexp_k(log w_k + log p_k(x)) over univariate components."""

    def __init__(self, weights: Any, components: list[nd.Distribution]) -> None:
        self.weights = weights
        self.components = components
        batch = jnp.shape(weights)[:-1]
        for c in components:
            batch = jax.lax.broadcast_shapes(batch, c.batch_shape)
        super().__init__(batch_shape=batch, event_shape=())

    @property
    def support(self) -> Any:
        return self.components[0].support

    def log_prob(self, value: Any) -> Any:
        lp = jnp.stack([c.log_prob(value) for c in self.components], axis=-1)
        return jax.nn.logsumexp(jnp.log(self.weights) + lp, axis=-1)

    def sample(self, key: Any, sample_shape: tuple[int, ...] = ()) -> Any:
        k1, k2 = jax.random.split(key)
        shape = sample_shape + self.batch_shape
        xs = jnp.stack([c.expand(self.batch_shape).sample(k, sample_shape) for c, k in
                        zip(self.components, jax.random.split(k2, len(self.components)),
                            strict=True)], axis=-1)
        idx = nd.Categorical(probs=self.weights).expand(self.batch_shape).sample(k1, sample_shape)
        return jnp.take_along_axis(xs, idx.reshape(shape + (1,)), axis=-1)[..., 0]


_SUPPORTS = {"real": constraints.real, "positive": constraints.positive,
             "unit_interval": constraints.unit_interval}


class CustomLogp(nd.Distribution):
    """A user log-density `logp(value, **params)`; it cannot be sampled forward."""

    def __init__(self, logp: Callable[..., Any], params: dict[str, Any], support: str) -> None:
        self.logp = logp
        self.params = params
        self._support = _SUPPORTS[support]
        shapes = [jnp.shape(v) for v in params.values()]
        batch = jax.lax.broadcast_shapes(*shapes) if shapes else ()
        super().__init__(batch_shape=batch, event_shape=())

    @property
    def support(self) -> Any:
        return self._support

    def log_prob(self, value: Any) -> Any:
        out = self.logp(value, **self.params)
        return jnp.broadcast_to(out, jnp.broadcast_shapes(jnp.shape(out), self.batch_shape))

    def sample(self, key: Any, sample_shape: tuple[int, ...] = ()) -> Any:
        raise NotImplementedError("a Custom log-density cannot be sampled forward "
                                  "(prior predictive needs a generative distribution)")



def HalfStudentT(nu: Any, sigma: Any) -> nd.Distribution:
    """|StudentT(nu, 0, sigma)|: the density doubles on (0, inf) because it is symmetric."""
    return nd.FoldedDistribution(nd.StudentT(nu, 0.0, sigma))


class Truncated(nd.Distribution):
    """Any univariate continuous `base` restricted to [lower, upper] and renormalised.

    NumPyro's TruncatedDistribution takes only a few bases; this one needs only `cdf`
    (and `icdf` to sample), so Gamma, LogNormal, Exponential... truncate as Normal does.
    """

    def __init__(self, base: nd.Distribution, lower: Any = None, upper: Any = None) -> None:
        self.base = base
        self.lower = -jnp.inf if lower is None else lower
        self.upper = jnp.inf if upper is None else upper
        # the support is the base's narrowed by the bounds given; which side is bounded is
        # known when the model is built, so an unbounded side stays unbounded (no inf in
        # the transform)
        lo, hi = _lower_of(base.support), _upper_of(base.support)
        if lower is not None:
            lo = lower if lo is None else jnp.maximum(lower, lo)
        if upper is not None:
            hi = upper if hi is None else jnp.minimum(upper, hi)
        self._support = (constraints.interval(lo, hi) if lo is not None and hi is not None
                         else constraints.greater_than(lo) if lo is not None
                         else constraints.less_than(hi) if hi is not None else constraints.real)
        batch = jax.lax.broadcast_shapes(base.batch_shape, jnp.shape(self.lower),
                                         jnp.shape(self.upper))
        super().__init__(batch_shape=batch, event_shape=())

    @property
    def support(self) -> Any:
        return self._support

    def _mass(self) -> tuple[Any, Any]:
        lo = jnp.where(jnp.isfinite(self.lower), self.lower, 0.0)
        hi = jnp.where(jnp.isfinite(self.upper), self.upper, 0.0)
        f_lo = jnp.where(jnp.isfinite(self.lower), self.base.cdf(lo), 0.0)
        f_hi = jnp.where(jnp.isfinite(self.upper), self.base.cdf(hi), 1.0)
        return f_lo, f_hi

    def log_prob(self, value: Any) -> Any:
        f_lo, f_hi = self._mass()
        inside = (value >= self.lower) & (value <= self.upper)
        return jnp.where(inside, self.base.log_prob(value) - jnp.log(f_hi - f_lo), -jnp.inf)

    def sample(self, key: Any, sample_shape: tuple[int, ...] = ()) -> Any:
        f_lo, f_hi = self._mass()
        u = jax.random.uniform(key, sample_shape + self.batch_shape)
        return self.base.icdf(f_lo + u * (f_hi - f_lo))


def _lower_of(c: Any) -> Any:
    return getattr(c, "lower_bound", None)


def _upper_of(c: Any) -> Any:
    return getattr(c, "upper_bound", None)


class Constrained(nd.Distribution):
    """`base`'s density on a declared constraint (Stan's `ordered[K] mu; mu ~ normal(...)`).

    The density is `base.log_prob` summed over the constraint's event dimensions, not
    renormalised (as in Stan: with constant bounds the constant does not matter); the
    sampler works on the constraint's unconstrained space, its Jacobian included.
    """

    def __init__(self, base: nd.Distribution, constraint: Any, event_ndim: int) -> None:
        self.base = base
        self._constraint = constraint
        shape = base.batch_shape + base.event_shape
        cut = len(shape) - event_ndim
        self._sum_dims = event_ndim - len(base.event_shape)
        super().__init__(batch_shape=shape[:cut], event_shape=shape[cut:])

    @property
    def support(self) -> Any:
        return self._constraint

    def log_prob(self, value: Any) -> Any:
        lp = self.base.log_prob(value)
        return jnp.sum(lp, axis=tuple(range(-self._sum_dims, 0))) if self._sum_dims else lp

    def sample(self, key: Any, sample_shape: tuple[int, ...] = ()) -> Any:
        raise NotImplementedError("a variable with a declared constraint cannot be sampled "
                                  "forward (its prior is the base density on the constraint)")


def __getattr__(name: str) -> Any:
    # everything else is NumPyro's own class of that name
    return getattr(nd, name)


"""The three IR distributions NumPyro has no direct class for (agent side only)."""

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


__all__ = ["Censored", "Mixture", "CustomLogp"]

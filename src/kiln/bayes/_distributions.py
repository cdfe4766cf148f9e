"""The distributions of the model IR: one class each, carrying its whole spec.

Adding a distribution is adding a class here: its spec (parameters with PyMC's names,
support, and `make`, which builds the NumPyro distribution on the agent from the evaluated
parameters; `d` is the agent's namespace: NumPyro's distributions, kiln's own in
`_numpyro_dists.py`, and `d.jnp`) and optional `aliases` (NumPyro's / scipy's spellings of
its parameters, for the shorthand). Declaring it registers it for validation, compilation,
the shorthand and `kiln.bayes`'s exports.

Wrappers that hold other distributions (Censored, Truncated, Mixture) say so with
`children` / `child_list`, and their extra rules with a `check` hook.
"""

from __future__ import annotations

from typing import Any

from ..errors import ModelTypeError, ShapeError
from ._dist import (
    REGISTRY,
    Args,
    Distribution,
    DistSpec,
    _FieldTypeError,
    dist_children,
    p,
    param_nodes,
    pickle_fn,
    register_by_value,
    root_spec,
    spec_of,
    unpickle_fn,
)

# -- continuous, univariate --------------------------------------------------------------------


class Normal(Distribution):
    aliases = {"loc": "mu", "scale": "sigma"}
    spec = DistSpec((p("mu"), p("sigma", "positive")), "real",
                    lambda d, a: d.Normal(a.mu, a.sigma))


class HalfNormal(Distribution):
    aliases = {"scale": "sigma"}
    spec = DistSpec((p("sigma", "positive"),), "positive", lambda d, a: d.HalfNormal(a.sigma))


class StudentT(Distribution):
    aliases = {"df": "nu", "loc": "mu", "scale": "sigma"}
    spec = DistSpec((p("nu", "positive"), p("mu"), p("sigma", "positive")), "real",
                    lambda d, a: d.StudentT(a.nu, a.mu, a.sigma))


class HalfStudentT(Distribution):
    aliases = {"df": "nu", "scale": "sigma"}
    spec = DistSpec((p("nu", "positive"), p("sigma", "positive")), "positive",
                    lambda d, a: d.HalfStudentT(a.nu, a.sigma),
                    doc="|StudentT(nu, 0, sigma)|: Stan's real<lower=0> x ~ student_t(nu, 0, sigma)")


class Cauchy(Distribution):
    aliases = {"loc": "mu", "scale": "sigma"}
    spec = DistSpec((p("mu"), p("sigma", "positive")), "real",
                    lambda d, a: d.Cauchy(a.mu, a.sigma))


class HalfCauchy(Distribution):
    aliases = {"scale": "sigma"}
    spec = DistSpec((p("sigma", "positive"),), "positive", lambda d, a: d.HalfCauchy(a.sigma))


class Laplace(Distribution):
    aliases = {"loc": "mu", "scale": "b"}
    spec = DistSpec((p("mu"), p("b", "positive")), "real", lambda d, a: d.Laplace(a.mu, a.b))


class Logistic(Distribution):
    aliases = {"loc": "mu", "scale": "s"}
    spec = DistSpec((p("mu"), p("s", "positive")), "real", lambda d, a: d.Logistic(a.mu, a.s))


class LogNormal(Distribution):
    aliases = {"loc": "mu", "scale": "sigma"}
    spec = DistSpec((p("mu"), p("sigma", "positive")), "positive",
                    lambda d, a: d.LogNormal(a.mu, a.sigma))


class Exponential(Distribution):
    aliases = {"lam": "rate", "lambda": "rate"}
    spec = DistSpec((p("rate", "positive"),), "positive", lambda d, a: d.Exponential(a.rate))


class Gamma(Distribution):
    aliases = {"concentration": "alpha", "rate": "beta"}
    spec = DistSpec((p("alpha", "positive"), p("beta", "positive")), "positive",
                    lambda d, a: d.Gamma(a.alpha, a.beta), doc="shape alpha, rate beta")


class InverseGamma(Distribution):
    aliases = {"concentration": "alpha", "rate": "beta"}
    spec = DistSpec((p("alpha", "positive"), p("beta", "positive")), "positive",
                    lambda d, a: d.InverseGamma(a.alpha, a.beta), doc="shape alpha, scale beta")


class Weibull(Distribution):
    aliases = {"concentration": "alpha", "scale": "beta"}
    spec = DistSpec((p("alpha", "positive"), p("beta", "positive")), "positive",
                    lambda d, a: d.Weibull(scale=a.beta, concentration=a.alpha),
                    doc="shape alpha, scale beta")


class Beta(Distribution):
    aliases = {"concentration1": "alpha", "concentration0": "beta", "a": "alpha", "b": "beta"}
    spec = DistSpec((p("alpha", "positive"), p("beta", "positive")), "unit_interval",
                    lambda d, a: d.Beta(a.alpha, a.beta))


class Uniform(Distribution):
    aliases = {"low": "lower", "high": "upper"}
    spec = DistSpec((p("lower"), p("upper")), "interval",
                    lambda d, a: d.Uniform(a.lower, a.upper))


class VonMises(Distribution):
    aliases = {"loc": "mu", "concentration": "kappa"}
    spec = DistSpec((p("mu"), p("kappa", "positive")), "circular",
                    lambda d, a: d.VonMises(a.mu, a.kappa), doc="an angle in [-pi, pi)")


class TruncatedNormal(Distribution):
    aliases = {"loc": "mu", "scale": "sigma", "low": "lower", "high": "upper"}
    spec = DistSpec((p("mu"), p("sigma", "positive"), p("lower", optional=True),
                     p("upper", optional=True)), "interval",
                    lambda d, a: d.TruncatedNormal(a.mu, a.sigma, low=a.lower, high=a.upper))


class Flat(Distribution):
    spec = DistSpec((), "real", lambda d, a: d.ImproperUniform(d.constraints.real, (), ()),
                    improper=True, doc="improper, density 1 (Stan's parameter with no prior)")


class HalfFlat(Distribution):
    spec = DistSpec((), "positive", lambda d, a: d.ImproperUniform(d.constraints.positive, (), ()),
                    improper=True, doc="improper, density 1 on (0, inf)")


# -- discrete ----------------------------------------------------------------------------------


class Bernoulli(Distribution):
    spec = DistSpec((p("p", "unit", optional=True), p("logit_p", optional=True)), "boolean",
                    lambda d, a: d.Bernoulli(probs=a.p, logits=a.logit_p),
                    discrete=True, one_of=("p", "logit_p"), doc="logit_p: Stan's bernoulli_logit")


class Binomial(Distribution):
    spec = DistSpec((p("n", "count"), p("p", "unit", optional=True), p("logit_p", optional=True)),
                    "bounded_count", lambda d, a: d.Binomial(a.n, probs=a.p, logits=a.logit_p),
                    discrete=True, one_of=("p", "logit_p"), doc="logit_p: Stan's binomial_logit")


class Poisson(Distribution):
    spec = DistSpec((p("rate", "positive", optional=True), p("log_rate", optional=True)), "count",
                    lambda d, a: d.Poisson(a.rate if a.log_rate is None else d.jnp.exp(a.log_rate)),
                    discrete=True, one_of=("rate", "log_rate"), doc="log_rate: Stan's poisson_log")


class NegativeBinomial(Distribution):
    spec = DistSpec((p("alpha", "positive"), p("beta", "positive")), "count",
                    lambda d, a: d.NegativeBinomialLogits(a.alpha, -d.jnp.log(a.beta)),
                    discrete=True,
                    doc="Stan's neg_binomial(alpha, beta): mean alpha/beta, variance "
                        "alpha/beta^2 (beta+1)")


class NegativeBinomial2(Distribution):
    spec = DistSpec((p("mu", "positive"), p("phi", "positive")), "count",
                    lambda d, a: d.NegativeBinomial2(a.mu, a.phi), discrete=True,
                    doc="Stan's neg_binomial_2(mu, phi): mean mu, variance mu + mu^2/phi")


class ZeroInflatedPoisson(Distribution):
    spec = DistSpec((p("gate", "unit"), p("rate", "positive")), "count",
                    lambda d, a: d.ZeroInflatedPoisson(a.gate, a.rate), discrete=True,
                    doc="an extra zero with probability gate, else Poisson(rate) (NumPyro's gate)")


class ZeroInflatedNegativeBinomial2(Distribution):
    spec = DistSpec((p("gate", "unit"), p("mu", "positive"), p("phi", "positive")), "count",
                    lambda d, a: d.ZeroInflatedNegativeBinomial2(a.mu, a.phi, gate=a.gate),
                    discrete=True, doc="an extra zero with probability gate, else "
                                       "NegativeBinomial2(mu, phi)")


class Categorical(Distribution):
    spec = DistSpec((p("p", "simplex", 1, optional=True), p("logit_p", event_ndim=1, optional=True)),
                    "categorical", lambda d, a: d.Categorical(probs=a.p, logits=a.logit_p),
                    discrete=True, one_of=("p", "logit_p"),
                    doc="values 0..K-1 (0-based, unlike Stan's 1..K)")


class Multinomial(Distribution):
    spec = DistSpec((p("n", "count"), p("p", "simplex", 1)), "count_vector",
                    lambda d, a: d.Multinomial(a.n, probs=a.p), event_ndim=1, discrete=True)


# -- multivariate ------------------------------------------------------------------------------


class MvNormal(Distribution):
    aliases = {"loc": "mu", "covariance_matrix": "cov", "scale_tril": "chol"}
    spec = DistSpec((p("mu", event_ndim=1), p("cov", "posdef", 2, optional=True),
                     p("chol", event_ndim=2, optional=True)), "real_vector",
                    lambda d, a: d.MultivariateNormal(a.mu, covariance_matrix=a.cov,
                                                      scale_tril=a.chol),
                    event_ndim=1, one_of=("cov", "chol"),
                    doc="chol: a lower Cholesky factor of cov (Stan's multi_normal_cholesky)")


class GaussianRandomWalk(Distribution):
    spec = DistSpec((p("sigma", "positive"),), "real_vector",
                    lambda d, a: d.GaussianRandomWalk(a.sigma, num_steps=a.shape[-1]),
                    event_ndim=1, needs_shape=True,
                    doc="x[0] ~ N(0, sigma), x[t] ~ N(x[t-1], sigma)")


class Dirichlet(Distribution):
    aliases = {"concentration": "alpha"}
    spec = DistSpec((p("alpha", "positive", 1),), "simplex", lambda d, a: d.Dirichlet(a.alpha),
                    event_ndim=1)


def _lkj_event(node: dict[str, Any], shapes: dict[str, tuple[int, ...]],
               declared: Any) -> tuple[int, ...]:
    return (node["dim"], node["dim"])


def _lkj_check(var: str, prefix: str, node: dict[str, Any], shapes: Any) -> None:
    dim = node.get("dim")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
        raise ModelTypeError(var, prefix + ".dim", f"{dim!r:.40} is not an int >= 2")


class LKJCholesky(Distribution):
    spec = DistSpec((p("eta", "positive"),), "corr_cholesky",
                    lambda d, a: d.LKJCholesky(a.dim, a.eta), event_ndim=2, statics=("dim",),
                    event=_lkj_event, check=_lkj_check,
                    doc="the Cholesky factor of a dim x dim correlation matrix, LKJ(eta)")


# -- wrappers ----------------------------------------------------------------------------------


def _univariate_base(var: str, prefix: str, node: dict[str, Any], shapes: Any) -> None:
    base = node.get("base")
    spec = root_spec(base) if isinstance(base, dict) else None
    if spec is None or spec.event_ndim or spec_of(base).event_ndim:
        raise ModelTypeError(var, prefix + ".base", f"{node['dist']} wraps a univariate "
                             "distribution")
    if node["dist"] == "Truncated" and (spec.discrete or spec.improper):
        raise ModelTypeError(var, prefix + ".base", "Truncated wraps a proper continuous "
                             "distribution")


class Censored(Distribution):
    """Censored(dist, lower=None, upper=None): an observed value at or beyond a bound
    contributes the probability mass beyond it (CDF / survival), as in Stan and PyMC."""

    spec = DistSpec((p("lower", optional=True), p("upper", optional=True)), "child",
                    lambda d, a: d.Censored(a.base, a.lower, a.upper), children=("base",),
                    check=_univariate_base, observed_only=True)

    def __init__(self, dist: Distribution, lower: Any = None, upper: Any = None) -> None:
        super().__init__(lower=lower, upper=upper)
        self.children = {"base": dist}


class Truncated(Distribution):
    """Truncated(dist, lower=None, upper=None): `dist` restricted to [lower, upper] and
    renormalised, as Stan's `T[lower, upper]` and PyMC's `pm.Truncated` (NumPyro's
    `low=` / `high=` spellings work too). Bounds may be expressions; the variable is
    sampled on that interval."""

    spec = DistSpec((p("lower", optional=True), p("upper", optional=True)), "interval",
                    lambda d, a: d.Truncated(a.base, a.lower, a.upper), children=("base",),
                    check=_univariate_base)

    def __init__(self, dist: Distribution, lower: Any = None, upper: Any = None, *,
                 low: Any = None, high: Any = None) -> None:
        for mine, theirs, name in ((lower, low, "lower"), (upper, high, "upper")):
            if mine is not None and theirs is not None:
                raise _FieldTypeError(name, f"Truncated: {name} given twice")
        super().__init__(lower=lower if low is None else low, upper=upper if high is None else high)
        self.children = {"base": dist}


def _mixture_check(var: str, prefix: str, node: dict[str, Any],
                   shapes: dict[str, tuple[int, ...]]) -> None:
    comps = node.get("components")
    if not isinstance(comps, list) or not comps:
        raise ModelTypeError(var, prefix + ".components", "a non-empty list of distributions")
    supports = set()
    for fld, c in dist_children(node, prefix):
        spec = root_spec(c)
        if spec is None or spec.event_ndim or spec.support in ("interval",):
            raise ModelTypeError(var, fld, "mixture components are univariate distributions "
                                 "with a fixed support")
        supports.add(spec.support)
    if len(supports) > 1:
        raise ModelTypeError(var, prefix + ".components",
                             f"components have different supports ({', '.join(sorted(supports))})")
    w = shapes.get("weights")
    if w is not None and (not w or w[-1] != len(comps)):
        raise ShapeError(var, prefix + ".weights", f"shape {w}: needs a last dimension of "
                         f"{len(comps)} (one weight per component)")


class Mixture(Distribution):
    """Mixture(weights, components): a finite mixture of univariate components that
    share a support; the mixture weights are a simplex (constant or a variable)."""

    spec = DistSpec((p("weights", "simplex", 1),), "child",
                    lambda d, a: d.Mixture(a.weights, a.components), child_list="components",
                    check=_mixture_check)

    def __init__(self, weights: Any, components: list[Distribution]) -> None:
        super().__init__(weights=weights)
        self.children = {"components": list(components)
                         if isinstance(components, (list, tuple)) else components}

    def to_node(self) -> dict[str, Any]:
        if not isinstance(self.children["components"], list) or not self.children["components"]:
            raise _FieldTypeError("components", "a non-empty list of kiln distributions")
        return super().to_node()


CUSTOM_SUPPORTS = ("real", "positive", "unit_interval")


def _custom_check(var: str, prefix: str, node: dict[str, Any], shapes: Any) -> None:
    if not isinstance(node.get("logp"), dict) or "pickle" not in node["logp"]:
        raise ModelTypeError(var, prefix + ".logp", "a pickled function")
    if node.get("support") not in CUSTOM_SUPPORTS:
        raise ModelTypeError(var, prefix + ".support", f"{node.get('support')!r}; one of "
                             f"{', '.join(CUSTOM_SUPPORTS)}")
    if not isinstance(node.get("params"), dict):
        raise ModelTypeError(var, prefix + ".params", "a dict of parameters")


class Custom(Distribution):
    """Custom(logp, support="real", **params): a log-density written by the user.

    `logp(value, **params)` takes jax arrays and returns the log-density (summed over
    nothing: elementwise or a scalar). The function ships by value (cloudpickle) inside
    the JSON, so a function defined in a notebook runs on the agent.
    """

    spec = DistSpec((), "custom",
                    lambda d, a: d.CustomLogp(unpickle_fn(a.logp["pickle"]), a.params, a.support),
                    statics=("logp", "support"), free_params=True, check=_custom_check)
    SUPPORTS = CUSTOM_SUPPORTS

    def __init__(self, logp: Any, support: str = "real", **params: Any) -> None:
        self.logp_fn = logp
        self.support = support
        self.statics, self.children, self.params = {}, {}, params

    def to_node(self) -> dict[str, Any]:
        if not callable(self.logp_fn):
            raise _FieldTypeError("logp", f"{self.logp_fn!r:.60} is not callable")
        return {"dist": "Custom", "logp": {"pickle": pickle_fn(self.logp_fn)},
                "support": self.support, "params": param_nodes(self.params, prefix="params.")}


SPECS: dict[str, DistSpec] = {name: cls.spec for name, cls in REGISTRY.items()}

__all__ = [*REGISTRY, "Args", "Distribution", "DistSpec", "SPECS", "pickle_fn",
           "register_by_value", "unpickle_fn"]

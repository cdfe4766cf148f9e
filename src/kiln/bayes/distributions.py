"""The distributions of the model IR, as plain data.

Each distribution is a class whose instances hold their parameters (numbers, names,
arrays or expressions). `SPECS` says, for each, its parameters with their domains, its
support and whether it is discrete; the validator uses it on the driver (numpy only)
and the compiler (`compile.py`) maps each name to its NumPyro distribution on the agent,
where the support gives the constraint transform.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, ClassVar

from .expr import to_node


@dataclass(frozen=True)
class Param:
    """One parameter: its domain (checked when it is a constant) and its event rank."""

    name: str
    domain: str = "real"   # real | positive | nonnegative | unit | open_unit | simplex | posdef | count
    event_ndim: int = 0
    optional: bool = False


@dataclass(frozen=True)
class DistSpec:
    name: str
    params: tuple[Param, ...]
    support: str             # real | positive | unit_interval | interval | real_vector | simplex
                             # | boolean | count | bounded_count | truncated
    event_ndim: int = 0
    discrete: bool = False
    improper: bool = False
    one_of: tuple[str, ...] = ()   # exactly one of these optional params must be given
    needs_shape: bool = False      # the event shape comes from shape= (GaussianRandomWalk)
    doc: str = ""


def _p(name: str, domain: str = "real", event_ndim: int = 0, optional: bool = False) -> Param:
    return Param(name, domain, event_ndim, optional)


SPECS: dict[str, DistSpec] = {s.name: s for s in [
    DistSpec("Normal", (_p("mu"), _p("sigma", "positive")), "real"),
    DistSpec("HalfNormal", (_p("sigma", "positive"),), "positive"),
    DistSpec("Exponential", (_p("rate", "positive"),), "positive"),
    DistSpec("Gamma", (_p("alpha", "positive"), _p("beta", "positive")), "positive",
             doc="shape alpha, rate beta"),
    DistSpec("Beta", (_p("alpha", "positive"), _p("beta", "positive")), "unit_interval"),
    DistSpec("Uniform", (_p("lower"), _p("upper")), "interval"),
    DistSpec("StudentT", (_p("nu", "positive"), _p("mu"), _p("sigma", "positive")), "real"),
    DistSpec("Cauchy", (_p("mu"), _p("sigma", "positive")), "real"),
    DistSpec("HalfCauchy", (_p("sigma", "positive"),), "positive"),
    DistSpec("LogNormal", (_p("mu"), _p("sigma", "positive")), "positive"),
    DistSpec("Laplace", (_p("mu"), _p("b", "positive")), "real"),
    DistSpec("MvNormal", (_p("mu", event_ndim=1), _p("cov", "posdef", event_ndim=2)),
             "real_vector", event_ndim=1),
    DistSpec("GaussianRandomWalk", (_p("sigma", "positive"),), "real_vector", event_ndim=1,
             needs_shape=True, doc="x[0] ~ N(0, sigma), x[t] ~ N(x[t-1], sigma)"),
    DistSpec("Dirichlet", (_p("alpha", "positive", event_ndim=1),), "simplex", event_ndim=1),
    DistSpec("Bernoulli", (_p("p", "unit", optional=True), _p("logit_p", optional=True)),
             "boolean", discrete=True, one_of=("p", "logit_p")),
    DistSpec("Binomial", (_p("n", "count"), _p("p", "unit", optional=True),
                          _p("logit_p", optional=True)),
             "bounded_count", discrete=True, one_of=("p", "logit_p")),
    DistSpec("Poisson", (_p("rate", "positive"),), "count", discrete=True),
    DistSpec("Weibull", (_p("alpha", "positive"), _p("beta", "positive")), "positive",
             doc="shape alpha, scale beta"),
    DistSpec("TruncatedNormal", (_p("mu"), _p("sigma", "positive"),
                                 _p("lower", optional=True), _p("upper", optional=True)),
             "truncated"),
    DistSpec("Flat", (), "real", improper=True),
    DistSpec("HalfFlat", (), "positive", improper=True),
]}

# Wrappers, validated and compiled by their own rules.
WRAPPERS = ("Censored", "Mixture", "Custom")
KNOWN = tuple(sorted(SPECS)) + WRAPPERS


class Distribution:
    """A distribution of the IR: a name and parameters."""

    spec: ClassVar[DistSpec]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        names = [p.name for p in self.spec.params]
        if len(args) > len(names):
            raise TypeError(f"{self.spec.name} takes {len(names)} parameter(s) "
                            f"({', '.join(names)}), got {len(args)}")
        params = dict(zip(names, args, strict=False))
        for k, v in kwargs.items():
            if k not in names:
                raise TypeError(f"{self.spec.name} has no parameter {k!r} "
                                f"(parameters: {', '.join(names) or 'none'})")
            if k in params:
                raise TypeError(f"{self.spec.name}: parameter {k!r} given twice")
            params[k] = v
        self.params: dict[str, Any] = {k: v for k, v in params.items() if v is not None}

    @property
    def name(self) -> str:
        return self.spec.name

    def to_node(self) -> dict[str, Any]:
        """The JSON node; raises TypeError with the parameter's name when one is bad."""
        return {"dist": self.name, **_param_nodes(self.params)}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.name}({args})"


class _FieldTypeError(TypeError):
    """A bad parameter inside a distribution; carries the field path for ModelTypeError."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


def _param_nodes(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Each parameter as a JSON node; a bad one raises _FieldTypeError naming its field."""
    out = {}
    for k, v in params.items():
        try:
            out[k] = to_node(v)
        except TypeError as e:
            raise _FieldTypeError(prefix + k, str(e)) from None
    return out


def _make(name: str) -> type[Distribution]:
    spec = SPECS[name]
    params = ", ".join(p.name + ("=None" if p.optional else "") for p in spec.params)
    doc = f"{name}({params}): support {spec.support}." + (f" {spec.doc}." if spec.doc else "")
    return type(name, (Distribution,), {"spec": spec, "__doc__": doc, "__module__": __name__})


Normal = _make("Normal")
HalfNormal = _make("HalfNormal")
Exponential = _make("Exponential")
Gamma = _make("Gamma")
Beta = _make("Beta")
Uniform = _make("Uniform")
StudentT = _make("StudentT")
Cauchy = _make("Cauchy")
HalfCauchy = _make("HalfCauchy")
LogNormal = _make("LogNormal")
Laplace = _make("Laplace")
MvNormal = _make("MvNormal")
GaussianRandomWalk = _make("GaussianRandomWalk")
Dirichlet = _make("Dirichlet")
Bernoulli = _make("Bernoulli")
Binomial = _make("Binomial")
Poisson = _make("Poisson")
Weibull = _make("Weibull")
TruncatedNormal = _make("TruncatedNormal")
Flat = _make("Flat")
HalfFlat = _make("HalfFlat")


class Censored(Distribution):
    """Censored(dist, lower=None, upper=None): an observed value at or beyond a bound
    contributes the probability mass beyond it (CDF / survival), as in Stan and PyMC."""

    spec = DistSpec("Censored", (_p("lower", optional=True), _p("upper", optional=True)), "base")

    def __init__(self, dist: Distribution, lower: Any = None, upper: Any = None) -> None:
        self.base = dist
        self.params = {k: v for k, v in (("lower", lower), ("upper", upper)) if v is not None}

    def to_node(self) -> dict[str, Any]:
        if not isinstance(self.base, Distribution):
            raise _FieldTypeError("dist", f"{self.base!r:.60} is not a kiln distribution")
        try:
            base = self.base.to_node()
        except _FieldTypeError as e:
            raise _FieldTypeError("dist." + e.field, str(e)) from None
        return {"dist": "Censored", "base": base, **_param_nodes(self.params)}


class Mixture(Distribution):
    """Mixture(weights, components): a finite mixture of univariate components that
    share a support; the mixture weights are a simplex (constant or a variable)."""

    spec = DistSpec("Mixture", (_p("weights", "simplex", event_ndim=1),), "base")

    def __init__(self, weights: Any, components: list[Distribution]) -> None:
        self.params = {"weights": weights}
        self.components = list(components) if isinstance(components, (list, tuple)) else components

    def to_node(self) -> dict[str, Any]:
        try:
            w = to_node(self.params["weights"])
        except TypeError as e:
            raise _FieldTypeError("weights", str(e)) from None
        if not isinstance(self.components, list) or not self.components:
            raise _FieldTypeError("components", "a non-empty list of kiln distributions")
        comps = []
        for i, c in enumerate(self.components):
            if not isinstance(c, Distribution):
                raise _FieldTypeError(f"components[{i}]", f"{c!r:.60} is not a kiln distribution")
            try:
                comps.append(c.to_node())
            except _FieldTypeError as e:
                raise _FieldTypeError(f"components[{i}].{e.field}", str(e)) from None
        return {"dist": "Mixture", "weights": w, "components": comps}


class Custom(Distribution):
    """Custom(logp, support="real", **params): a log-density written by the user.

    `logp(value, **params)` takes jax arrays and returns the log-density (summed over
    nothing: elementwise or a scalar). The function ships by value (cloudpickle) inside
    the JSON, so a function defined in a notebook runs on the agent.
    """

    spec = DistSpec("Custom", (), "custom")
    SUPPORTS = ("real", "positive", "unit_interval")

    def __init__(self, logp: Any, support: str = "real", **params: Any) -> None:
        self.logp = logp
        self.support = support
        self.params = params

    def to_node(self) -> dict[str, Any]:
        if not callable(self.logp):
            raise _FieldTypeError("logp", f"{self.logp!r:.60} is not callable")
        return {"dist": "Custom", "logp": {"pickle": pickle_fn(self.logp)},
                "support": self.support, "params": _param_nodes(self.params, prefix="params.")}


def pickle_fn(fn: Any) -> str:
    """cloudpickle `fn` by value when its module is the notebook or a local file."""
    import cloudpickle

    register_by_value(fn)
    return base64.b64encode(cloudpickle.dumps(fn)).decode("ascii")


def register_by_value(fn: Any) -> None:
    """Ship `fn`'s module by value unless it is an installed package (site-packages)."""
    import sys

    import cloudpickle

    modname = getattr(fn, "__module__", None)
    if not modname or modname == "__main__":
        return  # cloudpickle already pickles __main__ by value
    mod = sys.modules.get(modname)
    path = getattr(mod, "__file__", None) or ""
    if mod is not None and "site-packages" not in path and "dist-packages" not in path \
            and not modname.startswith("kiln."):
        try:
            cloudpickle.register_pickle_by_value(mod)
        except ValueError:
            pass  # a module without a file cannot be registered; it pickles by reference


def unpickle_fn(data: str) -> Any:
    import cloudpickle

    return cloudpickle.loads(base64.b64decode(data))

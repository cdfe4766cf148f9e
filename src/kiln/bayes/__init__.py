"""kiln.bayes: Bayesian models as plain data, sampled on the cluster's agents.

    from kiln.bayes import Model, Normal, HalfNormal
    model = (Model()
        .rv("mu", Normal(0.0, 10.0))
        .rv("sigma", HalfNormal(2.0))
        .rv("y", Normal("mu", "sigma"))
        .obs("y_obs", "y", [2.1, 2.5, 1.8]))
    post = kiln.sample(model, chains=4, warmup=500, draws=1000)

Importing this does not import jax: the driver builds and validates plain data, and
the agents compile it (_compile.py, _engine.py). The language: docs/model-language.md.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from . import _distributions
from ._constraints import CONSTRAINTS
from ._dist import REGISTRY as _REGISTRY
from ._dist import Distribution
from ._expr import Expr, ref
from ._model import Model
from ._ode import ode
from ._ops import (
    abs as abs,  # noqa: A004 - numpy's name; importable, kept out of *
)
from ._ops import (
    cholesky,
    concatenate,
    cos,
    cumsum,
    diag,
    eq,
    exp,
    expit,
    expm1,
    inv,
    lgamma,
    log,
    log1p,
    log_expit,
    log_softmax,
    logaddexp,
    logdet,
    logit,
    logp,
    logsumexp,
    matmul,
    maximum,
    mean,
    minimum,
    ne,
    prod,
    reshape,
    sigmoid,
    sin,
    softmax,
    solve,
    solve_triangular,
    sqrt,
    square,
    stack,
    std,
    sum,
    tan,
    tanh,
    transpose,
    where,
)
from ._ops import (
    max as max,  # noqa: A004
)
from ._ops import (
    min as min,  # noqa: A004
)
from ._posterior import Posterior, load
from ._sample import sample
from ._scan import scan
from ._shorthand import spec_to_model
from ._warn import ModelWarning

# every distribution class is exported under its name: declaring one in _distributions.py
# is the only place a new distribution touches
globals().update({name: getattr(_distributions, name) for name in _REGISTRY})

_LAZY = {
    "prior_predictive": ("kiln.bayes._predictive", "prior_predictive"),
    "posterior_predictive": ("kiln.bayes._predictive", "posterior_predictive"),
}

# abs, max and min are importable by name but left out of `*`, so that a star import does
# not shadow Python's builtins (sum stays, as it always was)
__all__ = [
    "CONSTRAINTS", "Distribution", "Expr", "Model", "ModelWarning", "Posterior",
    "cholesky", "concatenate", "cos", "cumsum", "diag", "eq", "exp", "expit", "expm1",
    "inv", "lgamma", "load", "log", "log1p", "log_expit", "log_softmax", "logaddexp", "logdet",
    "logit", "logp", "logsumexp", "matmul", "maximum", "mean", "minimum", "ne",
    "ode", "posterior_predictive", "prior_predictive", "prod", "ref", "reshape", "sample",
    "scan", "sigmoid", "sin", "softmax", "solve", "solve_triangular", "spec_to_model", "sqrt",
    "square", "stack", "std", "sum", "tan", "tanh", "transpose", "where",
]
__all__ += list(_REGISTRY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(import_module(module), attr)
    raise AttributeError(f"module 'kiln.bayes' has no attribute {name!r}")

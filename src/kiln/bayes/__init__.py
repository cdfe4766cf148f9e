"""kiln.bayes: Bayesian models as plain data, sampled on the cluster's agents.

    from kiln.bayes import Model, Normal, HalfNormal
    model = (Model()
        .rv("mu", Normal(0.0, 10.0))
        .rv("sigma", HalfNormal(2.0))
        .rv("y", Normal("mu", "sigma"))
        .obs("y_obs", "y", [2.1, 2.5, 1.8]))
    post = kiln.sample(model, chains=4, warmup=500, draws=1000)

Importing this does not import jax: the driver builds and validates plain data, and
the agents compile it (compile.py, engine.py).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .distributions import (
    Bernoulli,
    Beta,
    Binomial,
    Cauchy,
    Censored,
    Custom,
    Dirichlet,
    Distribution,
    Exponential,
    Flat,
    Gamma,
    GaussianRandomWalk,
    HalfCauchy,
    HalfFlat,
    HalfNormal,
    Laplace,
    LogNormal,
    Mixture,
    MvNormal,
    Normal,
    Poisson,
    StudentT,
    TruncatedNormal,
    Uniform,
    Weibull,
)
from .expr import Expr, exp, expit, log, log1p, logit, matmul, ref, sqrt
from .model import Model
from .posterior import Posterior, load
from .sample import sample  # binds the function over the submodule of the same name
from .shorthand import spec_to_model

_LAZY = {
    "prior_predictive": ("kiln.bayes.predictive", "prior_predictive"),
    "posterior_predictive": ("kiln.bayes.predictive", "posterior_predictive"),
    "sum": ("kiln.bayes.expr", "sum"),
}

__all__ = [
    "Bernoulli", "Beta", "Binomial", "Cauchy", "Censored", "Custom", "Dirichlet", "Distribution",
    "Expr", "Exponential", "Flat", "Gamma", "GaussianRandomWalk", "HalfCauchy", "HalfFlat",
    "HalfNormal", "Laplace", "LogNormal", "Mixture", "Model", "MvNormal", "Normal", "Poisson",
    "Posterior", "StudentT", "TruncatedNormal", "Uniform", "Weibull", "exp", "expit", "load", "log",
    "log1p", "logit", "matmul", "posterior_predictive", "prior_predictive", "ref", "sample",
    "spec_to_model", "sqrt", "sum",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(import_module(module), attr)
    raise AttributeError(f"module 'kiln.bayes' has no attribute {name!r}")

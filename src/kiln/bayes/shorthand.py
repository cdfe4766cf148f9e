"""Seed 000's shorthand: `{"dist": "normal", "mu": 0.0, "sigma": 1.0}` as a one-variable model.

`spec_to_model(spec)` gives a `Model` with one random variable named "x" that the
sampler draws from; any proper continuous distribution of the IR can be named
(case and underscores do not matter: "halfnormal", "half_normal", "HalfNormal").
A bad spec raises `SpecError` naming the field.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import ModelError, SpecError
from .distributions import SPECS
from .model import Model

VARIABLE = "x"


def _key(name: str) -> str:
    return name.replace("_", "").replace("-", "").lower()


# proper, continuous: the ones NUTS can sample on their own
SAMPLEABLE = {_key(n): n for n, s in SPECS.items() if not s.discrete and not s.improper
              and not s.needs_shape}


# NumPyro / scipy spellings accepted beside the IR's (PyMC-style) names
ALIASES: dict[str, dict[str, str]] = {
    "Normal": {"loc": "mu", "scale": "sigma"},
    "HalfNormal": {"scale": "sigma"},
    "Exponential": {"lam": "rate", "lambda": "rate"},
    "Gamma": {"concentration": "alpha", "rate": "beta"},
    "Beta": {"concentration1": "alpha", "concentration0": "beta", "a": "alpha", "b": "beta"},
    "Uniform": {"low": "lower", "high": "upper"},
    "StudentT": {"df": "nu", "loc": "mu", "scale": "sigma"},
    "Cauchy": {"loc": "mu", "scale": "sigma"},
    "HalfCauchy": {"scale": "sigma"},
    "LogNormal": {"loc": "mu", "scale": "sigma"},
    "Laplace": {"loc": "mu", "scale": "b"},
    "Weibull": {"concentration": "alpha", "scale": "beta"},
    "TruncatedNormal": {"loc": "mu", "scale": "sigma", "low": "lower", "high": "upper"},
    "MvNormal": {"loc": "mu", "covariance_matrix": "cov"},
    "Dirichlet": {"concentration": "alpha"},
}


def known() -> list[str]:
    """The distribution names the shorthand accepts (lower case)."""
    return sorted(SAMPLEABLE)


def spec_to_model(spec: dict[str, Any]) -> Model:
    """A Model with one variable "x" distributed as `spec` says."""
    if not isinstance(spec, dict):
        raise SpecError("spec", f"a dict like {{'dist': 'normal', 'mu': 0.0, 'sigma': 1.0}}, "
                        f"got {type(spec).__name__}")
    name = spec.get("dist")
    if not isinstance(name, str):
        raise SpecError("dist", f"missing or not a string ({name!r}); known: {', '.join(known())}")
    k = _key(name)
    if k not in SAMPLEABLE:
        why = ""
        if k in {_key(n) for n in SPECS}:
            why = " (discrete, improper or shape-dependent distributions cannot be sampled alone)"
        raise SpecError("dist", f"unknown distribution {name!r}{why}; known: {', '.join(known())}")
    dspec = SPECS[SAMPLEABLE[k]]
    params = {p.name: p for p in dspec.params}
    aliases = ALIASES.get(dspec.name, {})
    given: dict[str, Any] = {}
    spelled: dict[str, str] = {}   # IR name -> the user's spelling, for error messages
    for f, v in spec.items():
        if f == "dist":
            continue
        ir = f if f in params else aliases.get(f)
        if ir is None:
            names = list(params) + [a for a in aliases if a not in params]
            raise SpecError(f, f"unknown parameter {f!r} of {name}; its parameters: "
                            f"{', '.join(names) or '(none)'}")
        if ir in given:
            raise SpecError(f, f"{spelled[ir]!r} and {f!r} are the same parameter of {name}")
        given[ir], spelled[ir] = v, f
    for p in dspec.params:
        if not p.optional and p.name not in given:
            raise SpecError(p.name, f"missing parameter of {name} (needs "
                            f"{', '.join(q.name for q in dspec.params if not q.optional)})")
    for f, v in given.items():
        _check_value(spelled[f], v)
    cls = _dist_class(SAMPLEABLE[k])
    try:
        return Model().rv(VARIABLE, cls(**given)).validate()
    except ModelError as e:
        field = (e.field or "spec").split(".")[-1]
        msg = str(e).split(": ", 1)[-1]
        raise SpecError(spelled.get(field, field), msg) from None


def _check_value(field: str, v: Any) -> None:
    if isinstance(v, bool) or v is None or isinstance(v, str):
        raise SpecError(field, f"a number, got {type(v).__name__} {v!r}")
    if isinstance(v, (int, float, np.integer, np.floating)):
        if not math.isfinite(float(v)):
            raise SpecError(field, f"must be finite, got {v}")
        return
    try:
        arr = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise SpecError(field, f"a number or a list of numbers, got {type(v).__name__}") from None
    if not np.all(np.isfinite(arr)):
        raise SpecError(field, "must be finite (no NaN or inf)")


def _dist_class(name: str) -> type:
    from . import distributions

    return getattr(distributions, name)

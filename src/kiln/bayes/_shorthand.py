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
from ._dist import REGISTRY
from ._model import Model

VARIABLE = "x"


def _key(name: str) -> str:
    return name.replace("_", "").replace("-", "").lower()


def _sampleable() -> dict[str, str]:
    """Proper, continuous, plain: the distributions NUTS can sample on their own (read from
    the registry each time, so a distribution declared later is known too)."""
    return {_key(n): n for n, c in REGISTRY.items() if not (
        c.spec.discrete or c.spec.improper or c.spec.needs_shape or c.spec.children
        or c.spec.child_list or c.spec.statics or c.spec.free_params)}


def known() -> list[str]:
    """The distribution names the shorthand accepts (lower case)."""
    return sorted(_sampleable())


def spec_to_model(spec: dict[str, Any]) -> Model:
    """A Model with one variable "x" distributed as `spec` says."""
    if not isinstance(spec, dict):
        raise SpecError("spec", f"a dict like {{'dist': 'normal', 'mu': 0.0, 'sigma': 1.0}}, "
                        f"got {type(spec).__name__}")
    name = spec.get("dist")
    if not isinstance(name, str):
        raise SpecError("dist", f"missing or not a string ({name!r}); known: {', '.join(known())}")
    k = _key(name)
    sampleable = _sampleable()
    if k not in sampleable:
        why = ""
        if k in {_key(n) for n in REGISTRY}:
            why = " (discrete, improper or shape-dependent distributions cannot be sampled alone)"
        raise SpecError("dist", f"unknown distribution {name!r}{why}; known: {', '.join(known())}")
    cls = REGISTRY[sampleable[k]]
    dspec = cls.spec
    params = {p.name: p for p in dspec.params}
    aliases = cls.aliases   # NumPyro / scipy spellings beside the IR's (PyMC-style) names
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


"""Warnings on the driver where a valid model is likely not what was meant.

- A variable whose prior has real support (StudentT, Normal, Cauchy, Flat) passed as a
  parameter that must be positive (a `sigma`), with no `lower=`/`constraint=`: Stan's
  `real<lower=0> sigma; sigma ~ student_t(3, 0, 10)` written without its `<lower=0>`,
  which samples sigma over the whole real line.
- An observed `Flat` / `HalfFlat` variable: an improper density contributes nothing.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from ._dist import dist_children, spec_of


class ModelWarning(UserWarning):
    """A model that validates but is likely not what was meant."""


_POSITIVE_CONSTRAINTS = ("positive", "positive_ordered", "unit_interval", "simplex")


def _unbounded(e: dict[str, Any], support_of: Callable[[dict[str, Any]], str]) -> bool:
    c = e.get("constraint")
    if c in _POSITIVE_CONSTRAINTS or (isinstance(c, dict) and "lower" in c):
        return False
    return support_of(e["dist"]) == "real"


def _scale_uses(dist: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(name, param, distribution) for every bare name passed as a positive parameter."""
    spec = spec_of(dist)
    if spec is None:
        return []
    out = [(dist[q.name], q.name, spec.name) for q in spec.params
           if q.domain == "positive" and isinstance(dist.get(q.name), str)]
    for _, child in dist_children(dist):
        out += _scale_uses(child)
    return out


def warn_unlikely(by_name: dict[str, dict[str, Any]], observed: dict[str, str],
                  support_of: Callable[[dict[str, Any]], str]) -> None:
    warned: set[str] = set()
    for name, e in by_name.items():
        if e["kind"] != "rv":
            continue
        spec = spec_of(e["dist"])
        if name in observed and spec is not None and spec.improper:
            warnings.warn(f"{name}: observing a {spec.name} variable adds nothing to the log "
                          "density (its density is improper and constant); give it a proper "
                          "distribution", ModelWarning, stacklevel=4)
        for used, param, dname in _scale_uses(e["dist"]):
            target = by_name.get(used)
            if (used in warned or target is None or target["kind"] != "rv" or used in observed
                    or not _unbounded(target, support_of)):
                continue
            warned.add(used)
            warnings.warn(
                f"{used}: passed as {dname}'s {param} (which must be > 0), but its prior "
                f"{target['dist']['dist']} puts mass on the whole real line; declare it "
                f"positive (.rv({used!r}, ..., lower=0), Stan's real<lower=0>) or use a "
                "half distribution (HalfStudentT, HalfNormal, HalfCauchy)",
                ModelWarning, stacklevel=4)

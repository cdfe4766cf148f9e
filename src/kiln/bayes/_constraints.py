"""Constraints on a random variable: the set it lives on, as Stan declares it.

    .rv("mu", Normal(0, 10), shape=2, constraint="ordered")        # ordered[2] mu
    .rv("sigma", StudentT(3, 0, 10), lower=0)                      # real<lower=0> sigma
    .rv("beta1", Flat(), lower=0, upper=1 - ref("alpha1"))         # bounds may be expressions
    .rv("L", LKJCholesky(3, 2.0), constraint="corr_cholesky")      # (already its support)

The variable's density is its distribution's, on that set, not renormalised: Stan's
meaning (for a renormalised density use `Truncated`). The sampler works on the set's
unconstrained space with the Jacobian of NumPyro's transform. The entry stores

    "constraint": "ordered"   or   "constraint": {"lower": <expr>, "upper": <expr>}

Names follow NumPyro's `constraints` (short forms, with NumPyro's and Stan's as aliases).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ConstraintSpec:
    event_ndim: int                    # trailing dims one point of the set spans
    make: Callable[[Any], Any]         # numpyro.distributions.constraints -> the constraint
    within: tuple[str, ...]            # distribution supports whose set contains this one
    square: bool = False               # the last two dims are equal (matrices)
    doc: str = ""


_ANY = ("real", "real_vector")
CONSTRAINTS: dict[str, ConstraintSpec] = {
    "real": ConstraintSpec(0, lambda c: c.real, _ANY, doc="the real line (the default)"),
    "positive": ConstraintSpec(0, lambda c: c.positive, _ANY + ("positive",), doc="x > 0"),
    "unit_interval": ConstraintSpec(0, lambda c: c.unit_interval,
                                    _ANY + ("positive", "unit_interval"), doc="0 < x < 1"),
    "ordered": ConstraintSpec(1, lambda c: c.ordered_vector, _ANY,
                              doc="x[0] < x[1] < ... along the last axis"),
    "positive_ordered": ConstraintSpec(1, lambda c: c.positive_ordered_vector,
                                       _ANY + ("positive",), doc="0 < x[0] < x[1] < ..."),
    "simplex": ConstraintSpec(1, lambda c: c.simplex, _ANY + ("positive", "unit_interval",
                                                              "simplex"),
                              doc="x >= 0, sum(x) = 1 along the last axis"),
    "corr_cholesky": ConstraintSpec(2, lambda c: c.corr_cholesky, _ANY + ("corr_cholesky",),
                                    square=True,
                                    doc="the Cholesky factor of a correlation matrix"),
    "corr_matrix": ConstraintSpec(2, lambda c: c.corr_matrix, _ANY, square=True,
                                  doc="a correlation matrix"),
    "cholesky": ConstraintSpec(2, lambda c: c.lower_cholesky, _ANY, square=True,
                               doc="lower triangular, positive diagonal (cholesky_factor_cov)"),
    "positive_definite": ConstraintSpec(2, lambda c: c.positive_definite, _ANY, square=True,
                                        doc="symmetric positive-definite (cov_matrix)"),
}

ALIASES = {
    "ordered_vector": "ordered", "positive_ordered_vector": "positive_ordered",
    "cholesky_factor_corr": "corr_cholesky", "lower_cholesky": "cholesky",
    "cholesky_factor_cov": "cholesky", "cov_matrix": "positive_definite",
}

# supports a lower / upper bound may narrow (interval bounds inside them)
BOUNDABLE = ("real", "positive", "unit_interval", "interval")


def canonical(name: str) -> str | None:
    """The table's name for `name` (aliases resolved), or None when unknown."""
    name = ALIASES.get(name, name)
    return name if name in CONSTRAINTS else None


def make_bounds(c: Any, lower: Any, upper: Any) -> Any:
    """NumPyro's constraint for `lower <= x <= upper` (either may be None)."""
    if lower is not None and upper is not None:
        return c.interval(lower, upper)
    return c.greater_than(lower) if lower is not None else c.less_than(upper)

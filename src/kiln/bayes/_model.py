"""`Model`: a Bayesian model as plain data.

    model = (Model()
        .rv("mu", Normal(0.0, 10.0))
        .rv("sigma", HalfNormal(2.0))
        .rv("y", Normal("mu", "sigma"))
        .obs("y_obs", "y", [2.1, 2.5, 1.8]))

A model is an ordered list of entries, each a JSON object:

    {"kind": "rv",   "name": "mu", "dist": {"dist": "Normal", "mu": 0.0, "sigma": 10.0}, "shape": null}
    {"kind": "obs",  "name": "y_obs", "of": "y", "value": {"array": [...], "dtype": "float64"}}
    {"kind": "det",  "name": "theta", "expr": {"op": "add", "args": ["mu", ...]}}
    {"kind": "data", "name": "x", "value": {"array": [...], "dtype": "float64"}}
    {"kind": "factor", "name": "prior_mu1", "expr": <expr>}     (Stan's target += expr)

An rv entry may add `"constraint": "ordered"` or `{"lower": <expr>, "upper": <expr>}`
(_constraints.py). The whole language: docs/model-language.md.

`to_json()` is what crosses the wire; the agent compiles it (`_compile.py`). Problems a
single entry shows are raised when it is added; problems between entries (unknown
names, cycles, shapes) by `validate()`, which `kiln.sample` calls before any agent.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np

from ..errors import DataError, DuplicateObservationError, ModelError, ModelTypeError, ShapeError
from ._constraints import canonical
from ._dist import Distribution, _FieldTypeError
from ._expr import array_node, to_node

FORMAT = "kiln.model/1"


class Model:
    """A builder of random variables, observations, deterministics and data."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    # -- building -----------------------------------------------------------------

    def rv(self, name: str, dist: Distribution, shape: int | tuple[int, ...] | None = None, *,
           constraint: str | None = None, lower: Any = None, upper: Any = None) -> Model:
        """A random variable `name ~ dist`, a vector or array when `shape` is given.

        `constraint` ("positive", "ordered", "simplex", "corr_cholesky", ...) or `lower` /
        `upper` (numbers or expressions) declare the set it lives on, as Stan's
        `ordered[K] mu;` or `real<lower=0> sigma;`: the density is `dist`'s on that set.
        """
        self._check_new_name(name)
        if not isinstance(dist, Distribution):
            raise ModelTypeError(name, "dist", f"{dist!r:.60} is not a kiln distribution "
                                 "(kiln.bayes.Normal, HalfNormal, ...)")
        try:
            node = dist.to_node()
        except _FieldTypeError as e:
            raise ModelTypeError(name, e.field, e.message) from None
        entry = {"kind": "rv", "name": name, "dist": node, "shape": _shape(name, shape)}
        c = _constraint(name, constraint, lower, upper)
        if c is not None:
            entry["constraint"] = c
        return self._add(entry)

    def factor(self, name: str, expr: Any) -> Model:
        """Add `expr` (summed) to the log density: Stan's `target += expr`, NumPyro's
        `numpyro.factor`, PyMC's `pm.Potential`. `name` labels the term."""
        self._check_new_name(name)
        return self._add({"kind": "factor", "name": name, "expr": _node(name, "expr", expr)})

    def obs(self, name: str, of: str, value: Any) -> Model:
        """Observe random variable `of` at `value` (data); `name` labels the likelihood."""
        self._check_new_name(name)
        if not isinstance(of, str):
            raise ModelTypeError(name, "of", f"{of!r:.60} is not the name of a random variable")
        for e in self.entries:
            if e["kind"] == "obs" and e["of"] == of:
                raise DuplicateObservationError(
                    of, "obs", f"observed twice: by {e['name']!r} and {name!r} "
                    "(concatenate the data into one observation)")
        return self._add({"kind": "obs", "name": name, "of": of, "value": _data(name, value)})

    def det(self, name: str, expr: Any) -> Model:
        """A deterministic value `name = expr`, recorded in the trace."""
        self._check_new_name(name)
        return self._add({"kind": "det", "name": name, "expr": _node(name, "expr", expr)})

    def data(self, name: str, value: Any) -> Model:
        """Named data (covariates, group indices) that expressions refer to by name."""
        self._check_new_name(name)
        return self._add({"kind": "data", "name": name, "value": _data(name, value)})

    def _add(self, entry: dict[str, Any]) -> Model:
        self.entries.append(entry)
        return self

    def _check_new_name(self, name: Any) -> None:
        if not isinstance(name, str) or not name:
            raise ModelTypeError(None, "name", f"{name!r:.60} is not a variable name (a non-empty str)")
        if any(e["name"] == name for e in self.entries):
            raise ModelError(name, "name", "defined twice (each variable, observation, "
                             "deterministic and data needs its own name)")

    # -- reading ------------------------------------------------------------------

    def names(self, kind: str | None = None) -> list[str]:
        return [e["name"] for e in self.entries if kind is None or e["kind"] == kind]

    def __getitem__(self, name: str) -> dict[str, Any]:
        for e in self.entries:
            if e["name"] == name:
                return e
        raise KeyError(name)

    def validate(self) -> Model:
        """Check the whole model; raises a ModelError subclass naming variable and field."""
        from ._validate import validate

        validate(self.entries)
        return self

    # -- plain data ---------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "entries": copy.deepcopy(self.entries)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_json(cls, data: str | dict[str, Any]) -> Model:
        """A model from `to_json()` text or `to_dict()` data (validated)."""
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as e:
                raise ModelError(None, None, f"not model JSON: {e}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ModelError(None, "format", f"not a kiln model (expected format {FORMAT!r})")
        entries = data.get("entries")
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ModelError(None, "entries", "a list of entry objects")
        m = cls()
        m.entries = copy.deepcopy(entries)
        return m.validate()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Model) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        parts = []
        for e in self.entries:
            if e["kind"] == "rv":
                parts.append(f"{e['name']} ~ {e['dist']['dist']}")
            elif e["kind"] == "factor":
                parts.append(f"target += {e['name']}")
            elif e["kind"] == "obs":
                parts.append(f"{e['name']} = obs({e['of']})")
            else:
                parts.append(f"{e['name']} ({e['kind']})")
        return f"Model({'; '.join(parts)})"


def _constraint(name: str, constraint: Any, lower: Any, upper: Any) -> Any:
    if constraint is not None and (lower is not None or upper is not None):
        raise ModelTypeError(name, "constraint", "give a named constraint or lower/upper bounds, "
                             "not both")
    if constraint is not None:
        if not isinstance(constraint, str) or canonical(constraint) is None:
            from ._constraints import CONSTRAINTS
            raise ModelTypeError(name, "constraint", f"{constraint!r:.60} is not a constraint; "
                                 f"known: {', '.join(CONSTRAINTS)}")
        return canonical(constraint)
    if lower is None and upper is None:
        return None
    return {k: _node(name, f"constraint.{k}", v) for k, v in (("lower", lower), ("upper", upper))
            if v is not None}


def _node(name: str, field: str, value: Any) -> int | float | str | dict[str, Any]:
    """``value`` as an expression node; ``ModelTypeError`` naming ``name``'s ``field`` if it
    cannot be one."""
    try:
        return to_node(value)
    except TypeError as e:
        raise ModelTypeError(name, field, str(e)) from None


def _shape(name: str, shape: Any) -> list[int] | None:
    if shape is None:
        return None
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (int(shape),)
    if not isinstance(shape, (tuple, list)) or not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in shape):
        raise ModelTypeError(name, "shape", f"{shape!r:.60} is not a tuple of ints")
    if any(d < 1 for d in shape):
        raise ShapeError(name, "shape", f"{tuple(shape)} has a dimension < 1")
    return [int(d) for d in shape]


def _data(name: str, value: Any) -> dict[str, Any]:
    try:
        arr = np.asarray(value)
    except ValueError:
        raise ModelTypeError(name, "value", "a ragged list is not an array") from None
    if arr.dtype == object or not (arr.dtype == bool or np.issubdtype(arr.dtype, np.number)):
        raise ModelTypeError(name, "value", f"data must be numbers, got {arr.dtype} "
                             f"({str(value)[:60]})")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise ModelTypeError(name, "value", "complex data is not supported")
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise DataError(name, "value", f"{int(bad.sum())} value(s) are NaN or inf "
                            f"(first at index {where if arr.ndim else '()'}: {arr[bad].flat[0]})")
    return array_node(arr)

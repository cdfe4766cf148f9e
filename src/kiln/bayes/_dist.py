"""What a distribution of the IR is: its spec (one table row) and its Python face.

A distribution is a class whose `spec` carries everything kiln needs to know about it:
its parameters with their domains, its support, its event rank, and `make`, the function
that builds the NumPyro distribution on the agent. Declaring the class registers it
(`REGISTRY`), so a new distribution touches one place: its class in `_distributions.py`.
Validation (`_validate.py`) and compilation (`_compile.py`) read the spec and never name a
distribution.

A distribution node is a JSON object:

    {"dist": "Normal", "mu": <expr>, "sigma": <expr>}
    {"dist": "Truncated", "base": <dist node>, "lower": <expr>}        (children)
    {"dist": "LKJCholesky", "dim": 3, "eta": <expr>}                    (statics)

Nothing here imports jax: `make` receives the agent's distribution namespace.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import ModelTypeError
from ._expr import Expr, to_node


@dataclass(frozen=True)
class Param:
    """One parameter: its domain (checked when it is a constant) and its event rank."""

    name: str
    domain: str = "real"   # real | positive | nonnegative | unit | simplex | posdef | count
    event_ndim: int = 0
    optional: bool = False


def p(name: str, domain: str = "real", event_ndim: int = 0, optional: bool = False) -> Param:
    return Param(name, domain, event_ndim, optional)


class Args:
    """The evaluated parameters handed to `make`: `a.mu`; a missing optional one is None."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)

    def __getattr__(self, name: str) -> Any:
        return None


@dataclass(frozen=True)
class DistSpec:
    """One row of the distribution table."""

    params: tuple[Param, ...]
    # real | positive | unit_interval | interval | real_vector | simplex | boolean | count
    # | bounded_count | categorical | corr_cholesky | circular | child (the base's support)
    support: str
    make: Callable[[Any, Args], Any]    # (agent namespace of NumPyro dists, Args) -> dist
    event_ndim: int = 0
    discrete: bool = False
    improper: bool = False
    one_of: tuple[str, ...] = ()     # exactly one of these optional params must be given
    needs_shape: bool = False        # the event shape comes from shape= (GaussianRandomWalk)
    children: tuple[str, ...] = ()   # keys holding one distribution node each ("base")
    child_list: str | None = None    # key holding a list of distribution nodes (Mixture)
    statics: tuple[str, ...] = ()    # keys holding plain ints/strings, not expressions
    free_params: bool = False        # parameters live under "params" with any names (Custom)
    observed_only: bool = False      # a likelihood only, never sampled (Censored)
    event: Callable[..., tuple[int, ...]] | None = None  # (node, param shapes, declared) -> event
    check: Callable[..., None] | None = None  # extra driver checks: (var, prefix, node, spec_of)
    name: str = ""
    doc: str = ""


REGISTRY: dict[str, type[Distribution]] = {}


class _FieldTypeError(ModelTypeError):
    """A bad parameter found while building a node; `Model.rv` adds the variable's name."""

    def __init__(self, field: str, message: str) -> None:
        self.message = message
        super().__init__(None, field, message)


class Distribution:
    """A distribution of the IR: a name, parameters, and (wrappers) distributions inside."""

    spec: ClassVar[DistSpec]
    aliases: ClassVar[dict[str, str]] = {}   # other spellings of parameters (the shorthand's)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "spec" not in cls.__dict__:
            return
        cls.spec = dataclasses.replace(cls.spec, name=cls.__name__)
        REGISTRY[cls.__name__] = cls
        if not cls.__doc__:
            names = cls.spec.statics + tuple(
                q.name + ("=None" if q.optional else "") for q in cls.spec.params)
            cls.__doc__ = (f"{cls.__name__}({', '.join(names)}): support {cls.spec.support}."
                           + (f" {cls.spec.doc}." if cls.spec.doc else ""))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        names = list(self.spec.statics) + [q.name for q in self.spec.params]
        if len(args) > len(names):
            raise _FieldTypeError(self.name, f"{self.name} takes {len(names)} parameter(s) "
                                  f"({', '.join(names)}), got {len(args)}")
        given = dict(zip(names, args, strict=False))
        for k, v in kwargs.items():
            if k not in names:
                raise _FieldTypeError(k, f"{self.name} has no parameter {k!r} "
                                      f"(parameters: {', '.join(names) or 'none'})")
            if k in given:
                raise _FieldTypeError(k, f"{self.name}: parameter {k!r} given twice")
            given[k] = v
        self.statics = {k: given.pop(k) for k in self.spec.statics if k in given}
        self.children: dict[str, Any] = {}
        self.params: dict[str, Any] = {k: v for k, v in given.items() if v is not None}

    @property
    def name(self) -> str:
        return self.spec.name

    def to_node(self) -> dict[str, Any]:
        """The JSON node; raises a ModelTypeError naming the parameter when one is bad."""
        node: dict[str, Any] = {"dist": self.name}
        for k, v in self.statics.items():
            if isinstance(v, bool) or not isinstance(v, (int, str)):
                raise _FieldTypeError(k, f"{v!r:.60} is not an int or a str")
            node[k] = v
        for k, child in self.children.items():
            if isinstance(child, list):
                node[k] = [_child_node(f"{k}[{i}]", c) for i, c in enumerate(child)]
            else:
                node[k] = _child_node(k, child)
        node.update(param_nodes(self.params))
        return node

    def logp(self, value: Any) -> Expr:
        """The elementwise log density of `value` as an expression (Stan's
        `foo_lpdf(value | ...)` before the sum): `Normal(ref("mu"), 1).logp(ref("y"))`."""
        try:
            arg = to_node(value)
        except TypeError as e:
            raise _FieldTypeError("logp", str(e)) from None
        return Expr({"op": "logp", "args": [arg], "dist": self.to_node()})

    def __repr__(self) -> str:
        parts = {**self.statics, **self.children, **self.params}
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in parts.items())})"


def _child_node(field: str, child: Any) -> dict[str, Any]:
    if not isinstance(child, Distribution):
        raise _FieldTypeError(field, f"{child!r:.60} is not a kiln distribution")
    try:
        return child.to_node()
    except _FieldTypeError as e:
        raise _FieldTypeError(f"{field}.{e.field}", e.message) from None


def param_nodes(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Each parameter as a JSON node; a bad one raises _FieldTypeError naming its field."""
    out = {}
    for k, v in params.items():
        try:
            out[k] = to_node(v)
        except TypeError as e:
            raise _FieldTypeError(prefix + k, str(e)) from None
    return out


def spec_of(node: Any) -> DistSpec | None:
    """The spec of a distribution node, or None when the name is unknown."""
    cls = REGISTRY.get(node.get("dist")) if isinstance(node, dict) else None
    return cls.spec if cls else None


def dist_children(node: dict[str, Any], prefix: str = "dist") -> list[tuple[str, dict[str, Any]]]:
    """(field path, node) of the distributions directly inside a distribution node."""
    spec = spec_of(node)
    if spec is None:
        return []
    out = [(f"{prefix}.{k}", node[k]) for k in spec.children if isinstance(node.get(k), dict)]
    if spec.child_list and isinstance(node.get(spec.child_list), list):
        out += [(f"{prefix}.{spec.child_list}[{i}]", c)
                for i, c in enumerate(node[spec.child_list])]
    return out


def dist_params(node: dict[str, Any], prefix: str = "dist") -> list[tuple[str, Any]]:
    """(field path, expression node) of a distribution node's own parameters."""
    spec = spec_of(node)
    if spec is None:
        return []
    if spec.free_params:
        return [(f"{prefix}.params.{k}", v) for k, v in (node.get("params") or {}).items()]
    skip = {"dist", *spec.children, *spec.statics, spec.child_list}
    return [(f"{prefix}.{k}", v) for k, v in node.items() if k not in skip]


def dist_fields(node: dict[str, Any], prefix: str = "dist") -> list[tuple[str, Any]]:
    """(field path, expression node) of every parameter, those of inner distributions too."""
    out = dist_params(node, prefix)
    for fld, child in dist_children(node, prefix):
        out += dist_fields(child, fld)
    return out


def root_spec(node: dict[str, Any]) -> DistSpec | None:
    """The spec that says a node's support: a wrapper's base (or first component)."""
    spec = spec_of(node)
    while spec is not None and spec.support == "child":
        kids = dist_children(node)
        if not kids:
            return None
        node = kids[0][1]
        spec = spec_of(node)
    return spec


# -- functions shipped by value (Custom, NumPyro models) --------------------------------------

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

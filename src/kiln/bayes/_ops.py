"""The operations of the expression language, and their Python face.

Each operation is one row of `expr.OPS`: its arity, static attributes, shape rule (numpy,
on the driver) and value (`xp` is jax.numpy on the agent). The functions below build the
nodes: `where(c, a, b)`, `logsumexp(x, axis=-1)`, `stack([a, b])`, `cholesky(K)`...
Shape rules never allocate their operands (a GP's N x N covariance is only a shape here).
The face mirrors numpy's names (`sum`, `max`, `min`, `abs`), so this module reaches the
builtins as `builtins.sum`.

Long: each op's row and its Python function sit together, so adding an op is one place
(indexing, scan and ode, which need more, have their own modules).
"""

from __future__ import annotations

import builtins
from typing import Any

import numpy as np

from . import _indexing as indexing  # noqa: F401 - registers "index"
from ._dist import Distribution, _FieldTypeError, dist_fields
from ._expr import Ctx, Expr, NodeError, Op, register, to_node

Shape = tuple[int, ...]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _axis_ok(v: Any) -> bool:
    return v is None or _is_int(v)


def _ints_ok(v: Any) -> bool:
    return isinstance(v, list) and all(_is_int(d) for d in v)


def _broadcast(name: str, *shapes: Shape) -> Shape:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise NodeError(f"{name}: shapes {' and '.join(map(str, shapes))} do not broadcast") from None


def _axis(name: str, shape: Shape, axis: int) -> int:
    if not -len(shape) <= axis < len(shape):
        raise NodeError(f"{name}: axis {axis} out of range for shape {shape}")
    return axis % len(shape)


# -- elementwise -------------------------------------------------------------------------------

def _jax_nn(fn: str) -> Any:
    def run(xp: Any, a: Any) -> Any:
        import jax

        return getattr(jax.nn, fn)(a)
    return run


def _lgamma(xp: Any, a: Any) -> Any:
    import jax.scipy.special as jsp

    return jsp.gammaln(a)


UNARY: dict[str, Any] = {
    "neg": lambda xp, a: -a, "exp": lambda xp, a: xp.exp(a), "log": lambda xp, a: xp.log(a),
    "log1p": lambda xp, a: xp.log1p(a), "expm1": lambda xp, a: xp.expm1(a),
    "sqrt": lambda xp, a: xp.sqrt(a), "square": lambda xp, a: a * a,
    "abs": lambda xp, a: xp.abs(a), "sin": lambda xp, a: xp.sin(a),
    "cos": lambda xp, a: xp.cos(a), "tan": lambda xp, a: xp.tan(a),
    "tanh": lambda xp, a: xp.tanh(a), "expit": _jax_nn("sigmoid"),
    "logit": lambda xp, a: xp.log(a) - xp.log1p(-a), "log_expit": _jax_nn("log_sigmoid"),
    "lgamma": _lgamma,
}
BINARY: dict[str, Any] = {
    "add": lambda xp, a, b: a + b, "sub": lambda xp, a, b: a - b,
    "mul": lambda xp, a, b: a * b, "div": lambda xp, a, b: a / b,
    "pow": lambda xp, a, b: a ** b, "minimum": lambda xp, a, b: xp.minimum(a, b),
    "maximum": lambda xp, a, b: xp.maximum(a, b), "logaddexp": lambda xp, a, b: xp.logaddexp(a, b),
    "lt": lambda xp, a, b: a < b, "le": lambda xp, a, b: a <= b,
    "gt": lambda xp, a, b: a > b, "ge": lambda xp, a, b: a >= b,
    "eq": lambda xp, a, b: a == b, "ne": lambda xp, a, b: a != b,
}

for _name, _fn in UNARY.items():
    register(_name, Op(1, lambda s, n, c: s[0], lambda xp, a, n, f=_fn: f(xp, a[0])))
for _name, _fn in BINARY.items():
    register(_name, Op(2, lambda s, n, c, name=_name: _broadcast(name, *s),
                       lambda xp, a, n, f=_fn: f(xp, a[0], a[1])))
register("where", Op(3, lambda s, n, c: _broadcast("where", *s),
                     lambda xp, a, n: xp.where(a[0], a[1], a[2])))


# -- reductions and scans along an axis -----------------------------------------------------------

def _reduced(name: str) -> Any:
    def shape(s: list[Shape], node: dict[str, Any], ctx: Ctx) -> Shape:
        x, axis = s[0], node.get("axis")
        if axis is None:
            return ()
        a = _axis(name, x, axis)
        return x[:a] + x[a + 1:]
    return shape


def _logsumexp(xp: Any, a: list[Any], node: dict[str, Any]) -> Any:
    import jax.scipy.special as jsp

    return jsp.logsumexp(a[0], axis=node.get("axis"))


REDUCE: dict[str, Any] = {
    "sum": lambda xp, a, n: xp.sum(a[0], axis=n.get("axis")),
    "mean": lambda xp, a, n: xp.mean(a[0], axis=n.get("axis")),
    "prod": lambda xp, a, n: xp.prod(a[0], axis=n.get("axis")),
    "max": lambda xp, a, n: xp.max(a[0], axis=n.get("axis")),
    "min": lambda xp, a, n: xp.min(a[0], axis=n.get("axis")),
    "std": lambda xp, a, n: xp.std(a[0], axis=n.get("axis")),
    "logsumexp": _logsumexp,
}
for _name, _fn in REDUCE.items():
    register(_name, Op(1, _reduced(_name), _fn, statics={"axis": _axis_ok}))


def _along(name: str) -> Any:
    def shape(s: list[Shape], node: dict[str, Any], ctx: Ctx) -> Shape:
        if not s[0]:
            raise NodeError(f"{name} of a scalar")
        _axis(name, s[0], node.get("axis", -1))
        return s[0]
    return shape


def _nn_along(fn: str) -> Any:
    def run(xp: Any, a: list[Any], node: dict[str, Any]) -> Any:
        import jax

        return getattr(jax.nn, fn)(a[0], axis=node.get("axis", -1))
    return run


register("softmax", Op(1, _along("softmax"), _nn_along("softmax"), statics={"axis": _is_int}))
register("log_softmax", Op(1, _along("log_softmax"), _nn_along("log_softmax"),
                           statics={"axis": _is_int}))
register("cumsum", Op(1, _along("cumsum"), lambda xp, a, n: xp.cumsum(a[0], axis=n.get("axis", -1)),
                      statics={"axis": _is_int}))


# -- shapes --------------------------------------------------------------------------------------

def _transpose_shape(s: list[Shape], node: dict[str, Any], ctx: Ctx) -> Shape:
    x, axes = s[0], node.get("axes")
    if axes is None:
        return x[::-1]
    if sorted(a % builtins.max(len(x), 1) for a in axes) != list(range(len(x))) or len(axes) != len(x):
        raise NodeError(f"transpose: axes {axes} do not match shape {x}")
    return tuple(x[a] for a in axes)


def _reshape_shape(s: list[Shape], node: dict[str, Any], ctx: Ctx) -> Shape:
    x, new = s[0], list(node["shape"])
    size = int(np.prod(x))
    if new.count(-1) > 1 or any(d < -1 for d in new):
        raise NodeError(f"reshape: bad shape {new}")
    known = int(np.prod([d for d in new if d != -1]))
    if -1 in new:
        if known == 0 or size % known:
            raise NodeError(f"reshape: cannot reshape {x} into {tuple(new)}")
        new[new.index(-1)] = size // known
    if int(np.prod(new)) != size:
        raise NodeError(f"reshape: cannot reshape {x} into {tuple(new)}")
    return tuple(new)


def _stack_shape(s: list[Shape], node: dict[str, Any], ctx: Ctx) -> Shape:
    first = s[0]
    if any(x != first for x in s):
        raise NodeError(f"stack: items of different shapes {sorted(set(s))}")
    out = list(first)
    axis = node.get("axis", 0)
    if not -len(out) - 1 <= axis <= len(out):
        raise NodeError(f"stack: axis {axis} out of range")
    out.insert(axis % (len(out) + 1), len(s))
    return tuple(out)


def _concat_shape(s: list[Shape], node: dict[str, Any], ctx: Ctx) -> Shape:
    if any(not x for x in s):
        raise NodeError("concatenate: a scalar item (wrap it in a list: [x])")
    axis = _axis("concatenate", s[0], node.get("axis", 0))
    rest = [x[:axis] + x[axis + 1:] for x in s]
    if any(r != rest[0] or len(x) != len(s[0]) for r, x in zip(rest, s, strict=True)):
        raise NodeError(f"concatenate: shapes {s} differ off axis {axis}")
    return s[0][:axis] + (builtins.sum(x[axis] for x in s),) + s[0][axis + 1:]


register("transpose", Op(1, _transpose_shape,
                         lambda xp, a, n: xp.transpose(a[0], n.get("axes")),
                         statics={"axes": lambda v: v is None or _ints_ok(v)}))
register("reshape", Op(1, _reshape_shape, lambda xp, a, n: xp.reshape(a[0], tuple(n["shape"])),
                       statics={"shape": _ints_ok}))
register("stack", Op(None, _stack_shape, lambda xp, a, n: xp.stack(a, axis=n.get("axis", 0)),
                     statics={"axis": _is_int}))
register("concatenate", Op(None, _concat_shape,
                           lambda xp, a, n: xp.concatenate([xp.atleast_1d(v) for v in a],
                                                           axis=n.get("axis", 0)),
                           statics={"axis": _is_int}))


def _diag_shape(s: list[Shape], node: dict[str, Any], ctx: Ctx) -> Shape:
    x = s[0]
    if len(x) == 1:
        return (x[0], x[0])
    if len(x) == 2:
        return (builtins.min(x),)
    raise NodeError(f"diag: a vector (to a matrix) or a matrix (to its diagonal), got {x}")


register("diag", Op(1, _diag_shape, lambda xp, a, n: xp.diag(a[0])))


# -- linear algebra ----------------------------------------------------------------------------

def _matmul_shape(s: list[Shape], node: dict[str, Any], ctx: Ctx) -> Shape:
    a, b = s
    if not a or not b:
        raise NodeError(f"matmul of a scalar (shapes {a} and {b})")
    a2, b2 = (1,) + a if len(a) == 1 else a, b + (1,) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise NodeError(f"matmul: shapes {a} and {b} do not agree")
    try:
        batch = tuple(np.broadcast_shapes(a2[:-2], b2[:-2]))
    except ValueError:
        raise NodeError(f"matmul: shapes {a} and {b} do not agree") from None
    return batch + (a2[-2],) * (len(a) > 1) + (b2[-1],) * (len(b) > 1)


def _square(name: str, x: Shape) -> None:
    if len(x) < 2 or x[-1] != x[-2]:
        raise NodeError(f"{name}: needs square matrices, got shape {x}")


def _cholesky_shape(s: list[Shape], node: dict[str, Any], ctx: Ctx) -> Shape:
    _square("cholesky", s[0])
    return s[0]


def _logdet_shape(s: list[Shape], node: dict[str, Any], ctx: Ctx) -> Shape:
    _square("logdet", s[0])
    return s[0][:-2]


def _solve_shape(s: list[Shape], node: dict[str, Any], ctx: Ctx) -> Shape:
    a, b = s
    name = node["op"]
    _square(name, a)
    if not b or b[0 if len(b) == 1 else -2] != a[-1]:
        raise NodeError(f"{name}: shapes {a} and {b} do not agree")
    return b


def _solve_triangular(xp: Any, a: list[Any], node: dict[str, Any]) -> Any:
    import jax.scipy.linalg as jsl

    return jsl.solve_triangular(a[0], a[1], lower=node.get("lower", True))


register("matmul", Op(2, _matmul_shape, lambda xp, a, n: xp.matmul(a[0], a[1])))
register("cholesky", Op(1, _cholesky_shape, lambda xp, a, n: xp.linalg.cholesky(a[0])))
register("logdet", Op(1, _logdet_shape, lambda xp, a, n: xp.linalg.slogdet(a[0])[1]))
register("inv", Op(1, _cholesky_shape, lambda xp, a, n: xp.linalg.inv(a[0])))
register("solve", Op(2, _solve_shape, lambda xp, a, n: xp.linalg.solve(a[0], a[1])))
register("solve_triangular", Op(2, _solve_shape, _solve_triangular,
                                statics={"lower": lambda v: isinstance(v, bool)}))


# -- the log density of a distribution, as a value -------------------------------------------

def _logp_shape(s: list[Shape], node: dict[str, Any], ctx: Ctx) -> Shape:
    from ._expr import infer_shape

    batch, event = ctx.dist_shape(node["dist"], ctx)
    value = infer_shape(node["args"][0], ctx)
    if event and tuple(value[len(value) - len(event):]) != tuple(event):
        raise NodeError(f"logp: a value of shape {value} for a distribution with event shape "
                        f"{event}")
    return _broadcast("logp", batch, value[:len(value) - len(event)])


def _logp_eval(node: dict[str, Any], env: Any, xp: Any, const: Any, slots: Any) -> Any:
    from ._compile import make_dist
    from ._expr import evaluate

    value = evaluate(node["args"][0], env, xp, const, slots)
    return make_dist(node["dist"], env, const, None, slots).log_prob(value)


def _logp_inner(node: dict[str, Any]) -> list[tuple[str, Any]]:
    return dist_fields(node["dist"], "dist") if isinstance(node.get("dist"), dict) else []


register("logp", Op(1, _logp_shape, lambda xp, a, n: None, evaluate=_logp_eval,
                    statics={"dist": lambda v: isinstance(v, dict)}, required=("dist",),
                    inner=_logp_inner))


# -- the Python face -----------------------------------------------------------------------------

def _op(name: str, *args: Any, **statics: Any) -> Expr:
    node: dict[str, Any] = {"op": name, "args": [to_node(a) for a in args]}
    node.update({k: v for k, v in statics.items() if v is not None})
    return Expr(node)


def _unary(name: str, doc: str) -> Any:
    def f(x: Any) -> Expr:
        return _op(name, x)
    f.__name__, f.__doc__ = name, doc
    return f


exp = _unary("exp", "Elementwise e**x.")
log = _unary("log", "Elementwise natural log.")
log1p = _unary("log1p", "Elementwise log(1 + x), accurate near 0.")
expm1 = _unary("expm1", "Elementwise e**x - 1, accurate near 0.")
sqrt = _unary("sqrt", "Elementwise square root.")
square = _unary("square", "Elementwise x * x.")
abs = _unary("abs", "Elementwise |x|.")  # noqa: A001 - numpy's name
sin = _unary("sin", "Elementwise sine.")
cos = _unary("cos", "Elementwise cosine.")
tan = _unary("tan", "Elementwise tangent.")
tanh = _unary("tanh", "Elementwise hyperbolic tangent.")
expit = _unary("expit", "Elementwise logistic sigmoid 1 / (1 + e**-x) (Stan's inv_logit).")
sigmoid = expit
logit = _unary("logit", "Elementwise log(p / (1 - p)).")
log_expit = _unary("log_expit", "Elementwise log(sigmoid(x)), stable (Stan's log_inv_logit).")
lgamma = _unary("lgamma", "Elementwise log Gamma function.")
cholesky = _unary("cholesky", "Lower Cholesky factor of a symmetric positive-definite matrix.")
logdet = _unary("logdet", "log |det A| of a square matrix (the last two axes).")
inv = _unary("inv", "Matrix inverse (prefer solve).")
diag = _unary("diag", "A vector to its diagonal matrix, or a matrix to its diagonal vector.")


def minimum(a: Any, b: Any) -> Expr:
    """Elementwise minimum."""
    return _op("minimum", a, b)


def maximum(a: Any, b: Any) -> Expr:
    """Elementwise maximum."""
    return _op("maximum", a, b)


def logaddexp(a: Any, b: Any) -> Expr:
    """Elementwise log(e**a + e**b), stable."""
    return _op("logaddexp", a, b)


def eq(a: Any, b: Any) -> Expr:
    """Elementwise a == b (`==` on expressions compares the expressions themselves)."""
    return _op("eq", a, b)


def ne(a: Any, b: Any) -> Expr:
    """Elementwise a != b."""
    return _op("ne", a, b)


def where(cond: Any, a: Any, b: Any) -> Expr:
    """Elementwise `a` where `cond` holds, else `b` (broadcast, as numpy.where)."""
    return _op("where", cond, a, b)


def sum(x: Any, axis: int | None = None) -> Expr:  # noqa: A001 - mirrors numpy's name
    """Sum of all elements, or along one axis."""
    return _op("sum", x, axis=axis)


def mean(x: Any, axis: int | None = None) -> Expr:
    """Mean of all elements, or along one axis."""
    return _op("mean", x, axis=axis)


def prod(x: Any, axis: int | None = None) -> Expr:
    """Product of all elements, or along one axis."""
    return _op("prod", x, axis=axis)


def max(x: Any, axis: int | None = None) -> Expr:  # noqa: A001 - numpy's name
    """Largest element, or along one axis."""
    return _op("max", x, axis=axis)


def min(x: Any, axis: int | None = None) -> Expr:  # noqa: A001 - numpy's name
    """Smallest element, or along one axis."""
    return _op("min", x, axis=axis)


def std(x: Any, axis: int | None = None) -> Expr:
    """Standard deviation (ddof 0), of all elements or along one axis."""
    return _op("std", x, axis=axis)


def logsumexp(x: Any, axis: int | None = None) -> Expr:
    """log(sum(exp(x))), stable; of all elements or along one axis (Stan's log_sum_exp)."""
    return _op("logsumexp", x, axis=axis)


def softmax(x: Any, axis: int = -1) -> Expr:
    """exp(x) / sum(exp(x)) along `axis`."""
    return _op("softmax", x, axis=axis)


def log_softmax(x: Any, axis: int = -1) -> Expr:
    """x - logsumexp(x) along `axis`."""
    return _op("log_softmax", x, axis=axis)


def cumsum(x: Any, axis: int = -1) -> Expr:
    """Cumulative sum along `axis` (Stan's cumulative_sum)."""
    return _op("cumsum", x, axis=axis)


def transpose(x: Any, axes: list[int] | None = None) -> Expr:
    """Axes reversed, or permuted as `axes` says (`x.T` too)."""
    return _op("transpose", x, axes=None if axes is None else [int(a) for a in axes])


def reshape(x: Any, shape: tuple[int, ...]) -> Expr:
    """`x` with a new shape of the same size (one dimension may be -1)."""
    return _op("reshape", x, shape=[int(d) for d in shape])


def stack(items: list[Any], axis: int = 0) -> Expr:
    """Items of one shape stacked along a new axis (a list of expressions means this)."""
    return _op("stack", *items, axis=int(axis))


def concatenate(items: list[Any], axis: int = 0) -> Expr:
    """Items joined along an existing axis (Stan's append_row for vectors)."""
    return _op("concatenate", *items, axis=int(axis))


def matmul(a: Any, b: Any) -> Expr:
    """Matrix product `a @ b`."""
    return _op("matmul", a, b)


def solve(a: Any, b: Any) -> Expr:
    """x with a @ x = b (a square)."""
    return _op("solve", a, b)


def solve_triangular(a: Any, b: Any, lower: bool = True) -> Expr:
    """x with a @ x = b for a triangular `a` (Stan's mdivide_left_tri_low)."""
    return _op("solve_triangular", a, b, lower=bool(lower))


def logp(dist: Distribution, value: Any) -> Expr:
    """The elementwise log density of `value` under `dist` (Stan's `normal_lpdf(y | mu, s)`
    without the sum), as `dist.logp(value)`: for `factor` and scans."""
    if not isinstance(dist, Distribution):
        raise _FieldTypeError("dist", f"{dist!r:.60} is not a kiln distribution")
    return dist.logp(value)

"""`scan`: a recurrence over time with a carried state, compiled to `jax.lax.scan`.

    # ARMA(1, 1): err[t] = y[t] - (mu + phi * y[t-1] + theta * err[t-1])
    err = scan(lambda err, x: x["y"] - (ref("mu") + ref("phi") * x["y_prev"] + ref("theta") * err),
               init=ref("err0"), xs={"y": ref("y")[1:], "y_prev": ref("y")[:-1]})

`step(carry, x)` is called once, on the driver, with placeholder expressions (slots), and
returns the next carry as an expression: the recurrence is stored as that expression
graph, so the model stays plain data. The result is the stacked carries, shape
`(T,) + carry shape`; or, when `step` returns `(carry, out)`, the stacked outputs.

The node:

    {"op": "scan", "args": [init, xs...], "step": <graph>, "out": <graph>,
     "keys": ["y", "y_prev"] | null, "length": T | null}

Inside the graphs, `{"slot": "carry"}` is the carry, `{"slot": "x"}` the current slice of
a single `xs` (`"x.<key>"` for a dict), `{"slot": "t"}` the step index 0..T-1; every other
name is the model's, as anywhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ModelTypeError
from ._expr import Ctx, Expr, NodeError, Op, evaluate, infer_shape, register, to_node


def scan(step: Callable[[Expr, Any], Any], init: Any, xs: Any = None,
         length: int | None = None) -> Expr:
    """Stacked carries of `carry = step(carry, x)` over the leading axis of `xs`.

    `xs` is an expression, a dict of expressions of one length (then `x` is a dict), or
    None with `length=T`. `step` may return `(carry, out)`: then the outputs are stacked.
    """
    if xs is None and length is None:
        raise ModelTypeError(None, "scan", "give xs (sequences to scan over) or length=T")
    keys = list(xs) if isinstance(xs, dict) else None
    seqs = list(xs.values()) if isinstance(xs, dict) else ([] if xs is None else [xs])
    x: Any = None
    if keys is not None:
        x = {k: Expr({"slot": f"x.{k}"}) for k in keys}
    elif xs is not None:
        x = Expr({"slot": "x"})
    result = step(Expr({"slot": "carry"}), x)
    out = None
    if isinstance(result, tuple):
        if len(result) != 2:
            raise ModelTypeError(None, "scan", "step returns the next carry, or (carry, out)")
        result, out = result
    try:
        node: dict[str, Any] = {"op": "scan", "args": [to_node(init), *map(to_node, seqs)],
                                "step": to_node(result)}
        if out is not None:
            node["out"] = to_node(out)
    except TypeError as e:
        raise ModelTypeError(None, "scan", str(e)) from None
    if keys is not None:
        node["keys"] = keys
    if length is not None:
        node["length"] = int(length)
    return Expr(node)


def _slots(node: dict[str, Any]) -> tuple[str, ...]:
    keys = node.get("keys")
    return ("carry", "t", "x") + tuple(f"x.{k}" for k in keys or ())


def _keys_ok(v: Any) -> bool:
    return v is None or (isinstance(v, list) and all(isinstance(k, str) for k in v))


def _length_ok(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _shape(_: list[Any], node: dict[str, Any], ctx: Ctx) -> tuple[int, ...]:
    args = node["args"]
    carry = infer_shape(args[0], ctx)
    seqs = [infer_shape(a, ctx) for a in args[1:]]
    keys = node.get("keys")
    if keys is not None and len(keys) != len(seqs):
        raise NodeError(f"scan: {len(keys)} keys for {len(seqs)} sequences", "type")
    if keys is None and len(seqs) > 1:
        raise NodeError("scan: several sequences need keys", "type")
    if any(not s for s in seqs):
        raise NodeError("scan: a scalar sequence (xs needs a leading time axis)")
    lengths = {s[0] for s in seqs} | ({node["length"]} if "length" in node else set())
    if len(lengths) != 1:
        raise NodeError(f"scan: sequences of different lengths {sorted(lengths)}"
                        if seqs else "scan: needs xs or a length")
    slots = {**ctx.slots, "carry": carry, "t": ()}
    if keys is None and seqs:
        slots["x"] = seqs[0][1:]
    for k, s in zip(keys or (), seqs, strict=False):
        slots[f"x.{k}"] = s[1:]
    inner = ctx._replace(slots=slots)
    new = infer_shape(node["step"], inner)
    try:
        ok = len(new) <= len(carry) and all(a in (1, b) for a, b in zip(new[::-1], carry[::-1],
                                                                          strict=False))
    except TypeError:
        ok = False
    if not ok:
        raise NodeError(f"scan: the step gives shape {new}, the carry has shape {carry} "
                        "(the next carry must have the carry's shape)")
    each = infer_shape(node["out"], inner) if "out" in node else carry
    return (lengths.pop(),) + tuple(each)


def _eval(node: dict[str, Any], env: Any, xp: Any, const: Any, slots: Any) -> Any:
    import jax

    args = [evaluate(a, env, xp, const, slots) for a in node["args"]]
    init, seqs = xp.asarray(args[0]), args[1:]
    keys = node.get("keys")
    length = node.get("length") or seqs[0].shape[0]

    def body(carry: Any, inp: Any) -> Any:
        xs_t, t = inp
        local = {**(slots or {}), "carry": carry, "t": t}
        if keys is None and xs_t:
            local["x"] = xs_t[0]
        for k, v in zip(keys or (), xs_t, strict=False):
            local[f"x.{k}"] = v
        new = xp.broadcast_to(evaluate(node["step"], env, xp, const, local), init.shape)
        new = new.astype(init.dtype)
        out = evaluate(node["out"], env, xp, const, local) if "out" in node else new
        return new, out

    _, ys = jax.lax.scan(body, init, (list(seqs), xp.arange(length)), length=length)
    return ys


register("scan", Op(None, _shape, lambda xp, a, n: None, evaluate=_eval,
                    statics={"keys": _keys_ok, "length": _length_ok},
                    subgraphs=("step", "out"), slots=_slots))

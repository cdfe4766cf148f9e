"""`ode`: the solution of an ordinary differential equation at given times.

    # Lotka-Volterra: u' = (a - b v) u, v' = (-c + d u) v
    z = ode(lambda t, y: stack([(ref("a") - ref("b") * y[1]) * y[0],
                                (-ref("c") + ref("d") * y[0]) * y[1]]),
            y0=ref("z_init"), times=ref("ts"), t0=0.0)          # shape (len(ts), 2)

`rhs(t, y)` is called once on the driver with placeholders and returns dy/dt as an
expression over `t`, `y` and the model's names: the system is stored as that graph.

On the agent the node is solved by diffrax (https://docs.kidger.site/diffrax/): it is kept
up, written in JAX, differentiable through the solve (what NUTS needs), and has adaptive
explicit solvers (Dopri5 = Stan's rk45, Tsit5) and an implicit one for stiff systems
(Kvaerno5, in place of Stan's bdf). A solve that fails (too many steps) gives inf, so the
sampler rejects that point instead of stopping; a failed Newton step of the implicit solver
gives NaN in the solution or its gradient (`failures_as_nan`), which the sampler rejects
likewise, as Stan rejects a proposal whose ODE solve fails.

`steps=k` (the node's "steps", absent by default) solves with fixed steps: k equal steps of
the method per interval between output times, with no step-size controller, so the cost is
the same at every point and the derivative a scan back over the steps (an adaptive solve
may take up to max_steps far from the posterior, and vectorised chains wait for the
slowest). rtol and atol still bound each step's error estimate: a step over them gives inf,
so a step too coarse for the parameters is rejected, never sampled with a wrong solution.

    {"op": "ode", "args": [y0, times, t0], "rhs": <graph over slots t, y>,
     "method": "dopri5", "rtol": 1e-6, "atol": 1e-6, "max_steps": 4096, "steps": 4}
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..errors import ModelTypeError
from ._expr import (
    Ctx,
    Expr,
    NodeError,
    Op,
    const_array,
    evaluate,
    infer_shape,
    register,
    to_node,
)

METHODS = ("dopri5", "tsit5", "dopri8", "kvaerno5")


def ode(rhs: Callable[[Expr, Expr], Any], y0: Any, times: Any, t0: Any = 0.0, *,
        method: str = "dopri5", rtol: float = 1e-6, atol: float = 1e-6,
        max_steps: int = 4096, steps: int | None = None) -> Expr:
    """y(times) for dy/dt = rhs(t, y), y(t0) = y0; shape `(len(times),) + y0's shape`.

    `steps=k` solves with fixed steps, k per interval between output times, instead of
    adaptive ones: `max_steps` then goes unused, and `rtol`/`atol` bound each step's error
    estimate (a step over them gives inf, which the sampler rejects)."""
    if method not in METHODS:
        raise ModelTypeError(None, "ode.method", f"{method!r}; one of {', '.join(METHODS)}")
    if steps is not None and not _count(steps):
        raise ModelTypeError(None, "ode.steps", f"{steps!r}; a whole number of steps >= 1, or None")
    try:
        dy = to_node(rhs(Expr({"slot": "t"}), Expr({"slot": "y"})))
        args = [to_node(y0), to_node(times), to_node(t0)]
    except TypeError as e:
        raise ModelTypeError(None, "ode", str(e)) from None
    node = {"op": "ode", "args": args, "rhs": dy, "method": method, "rtol": float(rtol),
            "atol": float(atol), "max_steps": int(max_steps)}
    if steps is not None:
        node["steps"] = steps
    return Expr(node)


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _shape(_: list[Any], node: dict[str, Any], ctx: Ctx) -> tuple[int, ...]:
    y0, times, t0 = (infer_shape(a, ctx) for a in node["args"])
    if len(times) != 1:
        raise NodeError(f"ode: times must be a vector, got shape {times}")
    if t0 != ():
        raise NodeError(f"ode: t0 must be a scalar, got shape {t0}")
    dy = infer_shape(node["rhs"], ctx._replace(slots={**ctx.slots, "t": (), "y": y0}))
    if dy != y0:
        raise NodeError(f"ode: the right-hand side gives shape {dy}, the state has shape {y0}")
    _check_times(_known(node["args"][1], ctx), _known(node["args"][2], ctx))
    return times + y0


def _known(node: Any, ctx: Ctx) -> np.ndarray | None:
    """The value of a constant or of a data name; None for anything else (a parameter's
    value is not known before sampling, and is not checked)."""
    if isinstance(node, str):
        return np.asarray(ctx.data[node]) if node in ctx.data else None
    return const_array(node)


def _check_times(times: np.ndarray | None, t0: np.ndarray | None) -> None:
    """Stan's rules for output times: sorted, none before t0 (NaN or inf in data or constants
    is refused before this). Unsorted times made a fixed-step solve integrate backwards over
    the interval, silently, and an adaptive one fail."""
    if times is None:
        return
    times = np.asarray(times, dtype=float).ravel()
    back = np.flatnonzero(np.diff(times) < 0)
    if back.size:
        i = int(back[0]) + 1
        raise NodeError(f"ode: times must be sorted: times[{i}] = {times[i]:g} comes after "
                        f"times[{i - 1}] = {times[i - 1]:g}", "data")
    if t0 is not None and times.size and times[0] < float(t0):
        raise NodeError(f"ode: times[0] = {times[0]:g} is before t0 = {float(t0):g}", "data")


@contextlib.contextmanager
def failures_as_nan() -> Iterator[None]:
    """While a program is traced and lowered: a failed linear solve gives NaN, not an error.

    Kvaerno5 solves each step by Newton iterations; a rejected step may leave a non-finite
    iterate. Diffrax drops the step, but the derivative of the solve still goes through it,
    and Lineax checks every linear solve of a derivative with `throw=True` (hard-wired), so
    equinox raises a runtime error that ends the whole run. Equinox reads its `on_error`
    setting (the `EQX_ON_ERROR` variable, kept in `equinox._errors`) when the check is
    lowered; set to "nan" for the sampler's programs, the check gives NaN instead, the
    energy is NaN and NUTS treats that trajectory as divergent: the proposal is rejected and
    the run goes on. Only the programs lowered here are affected, never the caller's own
    equinox code; a model without an ODE has not imported equinox and is left alone.
    """
    errors = sys.modules.get("equinox._errors")
    if errors is None or not hasattr(errors, "EQX_ON_ERROR"):
        yield
        return
    before = errors.EQX_ON_ERROR
    errors.EQX_ON_ERROR = "nan"
    try:
        yield
    finally:
        errors.EQX_ON_ERROR = before


def _solver(method: str) -> Any:
    import diffrax

    return {"dopri5": diffrax.Dopri5, "tsit5": diffrax.Tsit5, "dopri8": diffrax.Dopri8,
            "kvaerno5": diffrax.Kvaerno5}[method]()


def _eval(node: dict[str, Any], env: Any, xp: Any, const: Any, slots: Any) -> Any:
    import diffrax

    y0, times, t0 = (xp.asarray(evaluate(a, env, xp, const, slots)) for a in node["args"])

    def f(t: Any, y: Any, args: Any) -> Any:
        return evaluate(node["rhs"], env, xp, const, {**(slots or {}), "t": t, "y": y})

    if "steps" in node:
        ys, worst = _fixed_steps(diffrax.ODETerm(f), _solver(node.get("method", "dopri5")), y0,
                                 times, t0, node["steps"], node.get("rtol", 1e-6),
                                 node.get("atol", 1e-6))
        return xp.where(worst <= 1.0, ys, xp.inf)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(f), _solver(node.get("method", "dopri5")), t0=t0, t1=times[-1],
        dt0=None, y0=y0, saveat=diffrax.SaveAt(ts=times),
        stepsize_controller=diffrax.PIDController(rtol=node.get("rtol", 1e-6),
                                                  atol=node.get("atol", 1e-6)),
        max_steps=node.get("max_steps", 4096), throw=False)
    return sol.ys


def _fixed_steps(term: Any, solver: Any, y0: Any, times: Any, t0: Any, steps: int,
                 rtol: float, atol: float) -> tuple[Any, Any]:
    """(y(times), worst error): `steps` equal steps of `solver` over each interval of
    (t0, *times), and the largest of the steps' error estimates over atol + rtol |y| (the
    norm diffrax's PIDController holds at 1).

    The number of steps is known when the program is traced, so the solve is two nested
    `lax.scan`s and its derivative a scan backwards over the stored stages: no while loop,
    no step-size controller, no checkpoints to recompute. Each output time is a step's end,
    so the solution there is the solver's own, not an interpolation. A failed step (an
    implicit method's Newton iteration) gives NaN, as a failed adaptive solve gives inf.
    """
    import diffrax
    import jax
    import jax.numpy as jnp

    def interval(carry: Any, ends: Any) -> Any:
        a, b = ends
        h = (b - a) / steps

        def step(carry: Any, i: Any) -> Any:
            y, state, worst = carry
            # the last step ends at b exactly, so rounding of a + i h does not build up
            t1 = jnp.where(i == steps - 1, b, a + (i + 1) * h)
            y1, y_error, _, state, result = solver.step(term, a + i * h, t1, y, None, state,
                                                        made_jump=False)
            y1 = jnp.where(result == diffrax.RESULTS.successful, y1, jnp.nan)
            scale = atol + rtol * jnp.maximum(jnp.abs(y), jnp.abs(y1))
            error = jnp.sqrt(jnp.mean(jax.lax.stop_gradient(y_error / scale) ** 2))
            return (y1, state, jnp.maximum(worst, error)), None

        carry, _ = jax.lax.scan(step, carry, jnp.arange(steps))
        return carry, carry[0]

    state = solver.init(term, t0, times[0], y0, None)
    edges = jnp.concatenate([jnp.reshape(t0, (1,)).astype(times.dtype), times])
    (_, _, worst), ys = jax.lax.scan(interval, (y0, state, jnp.zeros((), y0.dtype)),
                                     (edges[:-1], edges[1:]))
    return ys, worst


register("ode", Op(3, _shape, lambda xp, a, n: None, evaluate=_eval, subgraphs=("rhs",),
                   slots=lambda node: ("t", "y"),
                   statics={"method": lambda v: v in METHODS, "rtol": _positive,
                            "atol": _positive, "max_steps": _count, "steps": _count}))

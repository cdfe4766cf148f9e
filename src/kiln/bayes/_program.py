"""The three compiled programs of a run: `start`, `steps` (any chunk t0 .. t1), `finish`.

_engine.py says how they are used; _nuts.py, _chees.py and _adapt.py hold the samplers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from . import _chees, _nuts
from ._compile import Compiled
from ._ode import failures_as_nan


class Settings(NamedTuple):
    """Everything that changes the compiled programs, apart from the model."""

    n_chains: int
    warmup: int
    draws: int
    method: str
    target_accept: float
    max_tree_depth: int
    adapt: bool            # True: adapt step size/mass matrix; False: use the given ones
    dense: bool            # dense (d, d) inverse mass matrix, else diagonal
    positions: bool        # start from given (warmed-up) positions
    init: bool             # start from a given initial point (user's `init`)
    loglik: bool


class Carry(NamedTuple):
    """What `steps` carries from chunk to chunk, on the device."""

    sampler: Any           # _nuts.State | _chees.State
    schedule: Any          # (warmup, 2) Stan's adaptation windows (an argument: as a constant
                           # of the program, a long warm-up's would slow XLA's compile)
    init_ok: Any           # (n,) bool
    ndiv: Any              # (n,) divergences so far
    draws: Any             # _nuts.Info of (draws, n, ...) buffers


class Programs(NamedTuple):
    start: Any
    steps: Any
    finish: Any


def warmup_steps(s: Settings) -> int:
    """Warm-up steps that `steps` runs (ChEES warms up inside `start`)."""
    return s.warmup if s.method == "nuts" else 0


# A start whose gradient is past this is drawn again (build_start); a finite one this large
# means an overflowing model region, not a steep posterior (lotka_volterra's ODE sensitivities
# over 20 time units: about e^20 ~ 1e9, an estimate).
INIT_MAX_GRADIENT = 1e20


def build_start(cm: Compiled, s: Settings) -> Callable[..., Carry]:
    """Initial points, keys and the sampler's first state; ChEES's warm-up.

    Initial points are Stan's: uniform(-2, 2) on the unconstrained scale, drawn again until
    the log density and its gradient are finite, and here also until the gradient is below
    ``INIT_MAX_GRADIENT``. A start past that is one no step size moves from: posteriordb's
    arma11 started at |theta| > 1 sees its errors grow as theta^t and gradients of ~1e200, and
    such a chain stayed stuck for the whole run (min ESS ~7 in three runs of three). Starts
    below the bound are kept as drawn, so every other model starts where it did."""
    dim = cm.dim

    def start(consts: Any, seed: Any, chain_ids: Any, init_z: Any, step_size: Any,
              inv_mass: Any, positions: Any, schedule: Any) -> Carry:
        def ld(z: Any) -> Any:
            return cm.logdensity(z, consts)

        base = jax.random.PRNGKey(seed)
        chain_keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(chain_ids)
        k_init, k_warm, k_draw = jnp.moveaxis(
            jax.vmap(lambda k: jax.random.split(k, 3))(chain_keys), 1, 0)

        def init_one(key: Any) -> tuple[Any, Any]:
            def cond(c: Any) -> Any:
                return (~c[2]) & (c[0] < 100)

            def body(c: Any) -> Any:
                z = jax.random.uniform(jax.random.fold_in(key, c[0]), (dim,), minval=-2.0, maxval=2.0)
                lp, g = jax.value_and_grad(ld)(z)
                usable = jnp.isfinite(lp) & jnp.all(jnp.abs(g) < INIT_MAX_GRADIENT)
                return c[0] + 1, z, usable
            _, z, ok = jax.lax.while_loop(cond, body, (0, jnp.zeros(dim), False))
            return z, ok

        if s.positions:
            z0, init_ok = positions, jnp.ones(s.n_chains, bool)
        elif s.init:
            z0 = init_z
            init_ok = jax.vmap(lambda z: jnp.isfinite(ld(z)))(z0)
        else:
            z0, init_ok = jax.vmap(init_one)(k_init)

        if s.method == "chees":
            sampler = _chees.init(ld, s, z0, k_warm, k_draw)
        else:
            sampler = _nuts.init(ld, s, z0, k_warm, k_draw, step_size, inv_mass)
        n, d = s.n_chains, s.draws
        draws = _nuts.Info(jnp.zeros((d, n, dim)), jnp.zeros((d, n)), jnp.zeros((d, n), bool),
                           jnp.zeros((d, n)), jnp.zeros((d, n), jnp.int32),
                           jnp.zeros((d, n), jnp.int32))
        return Carry(sampler, schedule, init_ok, jnp.zeros(n, jnp.int32), draws)

    return start


def build_steps(cm: Compiled, s: Settings) -> Callable[..., Carry]:
    """Steps t0 .. t1 of the run (warm-up steps first, then draws) for every chain."""
    warm_n = warmup_steps(s)

    def steps(consts: Any, carry: Carry, t0: Any, t1: Any) -> Carry:
        def ld(z: Any) -> Any:
            return cm.logdensity(z, consts)

        sampler = carry.sampler
        if warm_n:
            warm = _nuts.warm_step(ld, s, carry.schedule)
            sampler = jax.lax.fori_loop(jnp.minimum(t0, warm_n), jnp.minimum(t1, warm_n),
                                        lambda t, st: warm(st, t), sampler)
        draw = (_chees if s.method == "chees" else _nuts).draw_step(ld, s)
        # the metric as loop constants, not loop state: XLA then hoists what depends only on
        # them (a dense metric's Cholesky factor) out of the loop instead of redoing it per draw
        fixed = {"step_size": sampler.step_size, "inverse_mass_matrix": sampler.inverse_mass_matrix}

        def one(t: Any, c: tuple[Any, Any, Any]) -> tuple[Any, Any, Any]:
            st, ndiv, buf = c
            st, info = draw(st._replace(**fixed), t)
            buf = jax.tree.map(lambda b, x: b.at[t].set(x), buf, info)
            return st, ndiv + info.is_divergent.astype(jnp.int32), buf

        sampler, ndiv, buf = jax.lax.fori_loop(
            jnp.maximum(t0, warm_n) - warm_n, jnp.maximum(t1, warm_n) - warm_n, one,
            (sampler, carry.ndiv, carry.draws))
        return Carry(sampler, carry.schedule, carry.init_ok, ndiv, buf)

    return steps


def build_finish(cm: Compiled, s: Settings) -> Callable[..., dict[str, Any]]:
    """Draws to constrained values, deterministics and pointwise log-likelihoods."""

    def finish(consts: Any, carry: Carry) -> dict[str, Any]:
        t = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731 - (draws, chains) -> (chains, draws)
        b = carry.draws
        pos = t(b.position)

        def post(z: Any) -> Any:
            values, loglik = cm.postprocess(z, consts)
            return values, (loglik if s.loglik else {})
        values, loglik = jax.vmap(jax.vmap(post))(pos)
        sampler = carry.sampler
        return {"samples": values, "log_likelihood": loglik, "init_ok": carry.init_ok,
                "stats": {"step_size": sampler.step_size, "acceptance_rate": t(b.acceptance_rate),
                          "diverging": t(b.is_divergent), "energy": t(b.energy),
                          "tree_depth": t(b.tree_depth), "num_steps": t(b.num_steps)},
                "last_position": pos[:, -1], "inverse_mass_matrix": sampler.inverse_mass_matrix}

    return finish


# NumPyro keeps its effect handlers on one process-wide stack, so two threads tracing NumPyro
# models at once corrupt each other's trace. Tracing (and any eager NumPyro call) holds this
# lock; XLA's compile of the traced program, the slow part, does not, and a cache hit never
# takes it: a compile for one model does not hold up a run of another.
TRACE_LOCK = threading.RLock()


def compile_programs(cm: Compiled, s: Settings, args: tuple[Any, ...], dev: Any) -> Programs:
    """The run's programs compiled ahead of time for `args` placed on `dev`."""
    start_fn, steps_fn, finish_fn = build_start(cm, s), build_steps(cm, s), build_finish(cm, s)
    sharding = jax.sharding.SingleDeviceSharding(dev)
    consts = args[0]
    i64 = jax.ShapeDtypeStruct((), jnp.int64, sharding=sharding)
    with TRACE_LOCK, failures_as_nan():
        carry = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                             jax.eval_shape(start_fn, *args))
        lowered = (jax.jit(start_fn).lower(*args),
                   # the carry's buffers are donated: each chunk updates the draw buffers in place
                   jax.jit(steps_fn, donate_argnums=1).lower(consts, carry, i64, i64),
                   jax.jit(finish_fn).lower(consts, carry))
    return Programs(*(program.compile() for program in lowered))

"""NUTS for a batch of chains: BlackJAX's kernel, Stan's warm-up (`_adapt.py`), one step at a time.

The No-U-Turn Sampler (Hoffman & Gelman 2014, with Betancourt's multinomial trajectory
sampling, as in Stan) is BlackJAX's `nuts.build_kernel`; this module only says how a batch
of chains is initialised and stepped, so that the engine can run warm-up and draws in chunks:

    state = init(ld, s, z0, k_warm, k_draw, step_size, inverse_mass_matrix)
    state = warm_step(ld, s, schedule)(state, t)          # t = 0 .. s.warmup - 1
    state, info = draw_step(ld, s)(state, t)              # t = 0 .. s.draws - 1

Keys: warm-up step `t` of a chain uses `split(k_warm, warmup)[t]` (what BlackJAX's
`window_adaptation.run` uses), draw `t` uses `fold_in(k_draw, t)`; so the draws depend on
(seed, chain, t) only, never on how the steps are cut into chunks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from . import _adapt

WARMUP_FREE_STEP_SIZE = 0.1   # warmup=0 and nothing given: a cautious step, unit metric


class State(NamedTuple):
    """A batch of chains (leading axis: chains)."""

    chain: Any                 # blackjax HMCState
    adapt: Any                 # _adapt.WindowState while adapting, else None
    step_size: Any             # (n,): what the next step uses
    inverse_mass_matrix: Any   # (n, d) diagonal or (n, d, d) dense
    warm_keys: Any             # (n, warmup, 2) when adapting, else (n, 2)
    draw_keys: Any             # (n, 2)


class Info(NamedTuple):
    position: Any
    acceptance_rate: Any
    is_divergent: Any
    energy: Any
    tree_depth: Any
    num_steps: Any


def init(ld: Callable, s: Any, z0: Any, k_warm: Any, k_draw: Any, step_size: Any,
         inverse_mass_matrix: Any) -> State:
    import blackjax

    n, dim = z0.shape
    chain = jax.vmap(lambda z: blackjax.nuts.init(z, ld))(z0)
    if not s.adapt:       # given step size and metric (shared warm-up): burn-in only
        return State(chain, None, step_size, inverse_mass_matrix, k_warm, k_draw)
    a_init, _, _ = _adapt.build(s.target_accept, s.dense)
    adapt = jax.vmap(lambda _: a_init(dim))(jnp.arange(n))
    if s.warmup == 0:
        eye = jnp.eye(dim) if s.dense else jnp.ones(dim)
        return State(chain, adapt, jnp.full(n, WARMUP_FREE_STEP_SIZE),
                     jnp.broadcast_to(eye, (n, *eye.shape)), k_warm[:, None], k_draw)
    warm_keys = jax.vmap(lambda k: jax.random.split(k, s.warmup))(k_warm)
    return State(chain, adapt, adapt.step_size, adapt.inverse_mass_matrix, warm_keys, k_draw)


def _kernel(ld: Callable, s: Any) -> Callable:
    import blackjax

    kernel = blackjax.nuts.build_kernel()

    def step(key: Any, chain: Any, eps: Any, imm: Any) -> Any:
        new, info = kernel(key, chain, ld, eps, imm, max_num_doublings=s.max_tree_depth)
        # A kinetic energy can overflow to -inf (a momentum of 1e236 after a gradient of
        # 1e235, posteriordb's arma11 at a non-invertible theta); BlackJAX then gives that
        # state an infinite weight and accepts it, with an acceptance rate of 1, so the chain
        # jumps from log density 65 to -3.6e233 and stays there at a step size of ~0. A
        # transition whose chosen state has no finite energy is rejected as a divergence.
        bad = ~jnp.isfinite(info.energy)
        new = jax.tree.map(lambda old, x: jnp.where(bad, old, x), chain, new)
        return new, info._replace(is_divergent=info.is_divergent | bad,
                                  acceptance_rate=jnp.where(bad, 0.0, info.acceptance_rate))
    return step


def warm_step(ld: Callable, s: Any, schedule: Any) -> Callable[[State, Any], State]:
    """One warm-up step of every chain: adapting (Stan's windows) or a fixed-kernel burn-in."""
    kernel = _kernel(ld, s)
    if not s.adapt:
        def burn(state: State, t: Any) -> State:
            keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(state.warm_keys)
            chain, _ = jax.vmap(kernel)(keys, state.chain, state.step_size, state.inverse_mass_matrix)
            return state._replace(chain=chain)
        return burn

    _, a_update, a_final = _adapt.build(s.target_accept, s.dense)

    def one(key: Any, chain: Any, ws: Any, stage: Any) -> Any:
        chain, info = kernel(key, chain, ws.step_size, ws.inverse_mass_matrix)
        ws = a_update(ws, stage, chain.position, info.acceptance_rate)
        return chain, ws

    def adapt(state: State, t: Any) -> State:
        keys = state.warm_keys[:, t]
        chain, ws = jax.vmap(one, in_axes=(0, 0, 0, None))(keys, state.chain, state.adapt, schedule[t])
        # the values the draws will use, kept current so a chunk may end anywhere
        eps, imm = jax.vmap(a_final)(ws)
        return state._replace(chain=chain, adapt=ws, step_size=eps, inverse_mass_matrix=imm)
    return adapt


def draw_step(ld: Callable, s: Any) -> Callable[[State, Any], tuple[State, Info]]:
    """One draw of every chain with the adapted step size and metric."""
    kernel = _kernel(ld, s)

    def draw(state: State, t: Any) -> tuple[State, Info]:
        keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(state.draw_keys)
        chain, info = jax.vmap(kernel)(keys, state.chain, state.step_size, state.inverse_mass_matrix)
        return state._replace(chain=chain), Info(
            chain.position, info.acceptance_rate, info.is_divergent, info.energy,
            info.num_trajectory_expansions, info.num_integration_steps)
    return draw

"""ChEES-adapted dynamic HMC for many chains (Hoffman, Radul & Sountsov 2021).

ChEES tunes one step size and one trajectory length for all the chains of a call, by
maximising the expected squared jump distance across the ensemble; the draws are then
jittered-length HMC (BlackJAX's `dynamic_hmc`). The chains share the adaptation by
design, so a chain's draws depend on the other chains of its call.

    state = init(ld, s, z0, k_warm, k_draw)        # the whole ChEES warm-up, one program
    state, info = draw_step(ld, s)(state, t)       # t = 0 .. s.draws - 1

The warm-up runs as BlackJAX's `chees_adaptation.run` (one compiled loop); the draws are
stepped here with the same kernel `chees_adaptation` hands back, rebuilt from its definition
(Halton-jittered integration steps), so that they can run in chunks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._nuts import Info

# ChEES adapts step size and trajectory length across the chains; "diagonal" would also
# estimate a diagonal mass matrix from the ensemble. Measured on an H200 with 4096 chains
# (bench/chees_metric.py): it lowered eight schools' worst R-hat from 1.022 to 1.004 but ran
# 27x longer (its trajectory-length floor), for 7x less ESS/s; so the identity metric it is.
MASS_MATRIX: str | None = None
INITIAL_STEP_SIZE = 0.1
LEARNING_RATE = 0.025


class State(NamedTuple):
    chain: Any                 # blackjax DynamicHMCState, batched
    step_size: Any             # (n,), one value shared by every chain
    inverse_mass_matrix: Any   # (n, d)
    num_leapfrog: Any          # () mean integration steps
    draw_keys: Any             # (n, 2)


def _max_bits(s: Any) -> float:
    return float(np.ceil(np.log2(max(s.warmup, 1) + s.draws)))


def init(ld: Callable, s: Any, z0: Any, k_warm: Any, k_draw: Any) -> State:
    import blackjax
    import optax
    from blackjax.adaptation.base import get_filter_adapt_info_fn

    n, dim = z0.shape
    chees = blackjax.chees_adaptation(ld, n, target_acceptance_rate=s.target_accept,
                                      adaptation_info_fn=get_filter_adapt_info_fn(),
                                      mass_matrix_estimation=MASS_MATRIX)
    (chain, params), _ = chees.run(k_warm[0], z0, step_size=INITIAL_STEP_SIZE,
                                   optim=optax.adam(LEARNING_RATE), num_steps=max(s.warmup, 1),
                                   max_sampling_steps=s.draws)
    imm = jnp.broadcast_to(params["inverse_mass_matrix"], (n, dim))
    return State(chain, jnp.broadcast_to(params["step_size"], (n,)), imm,
                 params["integration_steps_params"][0], k_draw)


def draw_step(ld: Callable, s: Any) -> Callable[[State, Any], tuple[State, Info]]:
    from blackjax.mcmc import dynamic_hmc

    max_bits = _max_bits(s)

    def integration_steps(i: Any, num_leapfrog: Any) -> Any:
        # chees_adaptation's own: Halton-jittered lengths (jitter_amount 1)
        jitter = dynamic_hmc.halton_sequence(i, max_bits) * 1.0 + (1.0 - 1.0)
        return jnp.asarray(jnp.ceil(jitter * num_leapfrog), dtype=int)

    kernel = dynamic_hmc.build_kernel(next_random_arg_fn=lambda i: i + 1,
                                      integration_steps_fn=integration_steps)

    def draw(state: State, t: Any) -> tuple[State, Info]:
        keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(state.draw_keys)
        chain, info = jax.vmap(lambda k, c: kernel(k, c, ld, state.step_size[0],
                                                   state.inverse_mass_matrix[0],
                                                   (state.num_leapfrog,)))(keys, state.chain)
        depth = jnp.zeros(keys.shape[0], jnp.int32)
        return state._replace(chain=chain), Info(
            chain.position, info.acceptance_rate, info.is_divergent, info.energy, depth,
            info.num_integration_steps)
    return draw

"""ChEES-adapted dynamic HMC for many chains (Hoffman, Radul & Sountsov 2021).

ChEES tunes one step size and one trajectory length for all the chains of a call, by
maximising the expected squared jump distance across the ensemble; the draws are then
jittered-length HMC (BlackJAX's `dynamic_hmc`, Halton-jittered integration steps). The chains
share the adaptation by design, so a chain's draws depend on the other chains of its call.

    state = init(ld, s, z0, k_warm, k_draw)        # the whole ChEES warm-up, one program
    state, info = draw_step(ld, s)(state, t)       # t = 0 .. s.draws - 1

The warm-up loop is written here over BlackJAX's ChEES update (`chees_adaptation.base`:
dual averaging of the step size on the ensemble's harmonic-mean acceptance, Adam on the
ChEES gradient of the log trajectory length) so that the metric can come from the ensemble
itself, as in MEADS (Hoffman & Sountsov 2022): with thousands of chains the cross-chain
variance of one step's positions is already a good diagonal metric, and it costs one
reduction over the chains. (BlackJAX's own `mass_matrix_estimation="diagonal"` folds the
chains into its Welford accumulator one at a time, a sequential loop of `n` tiny steps per
warm-up step, and floors the length from a (d, d) covariance pooled over half the warm-up:
on an H200 at 4096 chains that variant ran 27x longer than the identity metric.) The
trajectory length is floored at half a period of the slowest whitened direction
(LENGTH_FLOOR below), which the ChEES criterion alone leaves too short.

Measured on a 2-core CPU at 1024 chains (bench/results/chees-metric-vm.json), against the
identity metric: the worst parameter's ESS per gradient 6x higher on the seed 001 model and
about 7x on eight schools, whose worst R-hat went from 1.022 to 1.003.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._nuts import Info

# "ensemble": the diagonal metric is the cross-chain variance of the positions, refreshed at
# every warm-up step from METRIC_START on and, for the draws, averaged over the last half of
# the warm-up; None: the identity. Measured (bench/chees_metric.py) on the seed 001 model
# and eight schools: see bench/results/chees-*.json.
MASS_MATRIX: str | None = "ensemble"
METRIC_START = 0.1            # fraction of warm-up steps run with the identity metric first
# Floor the (jitter's maximum) trajectory length at LENGTH_FLOOR x sqrt(lambda_max), lambda_max
# the top eigenvalue of the whitened ensemble covariance: its slowest direction, which the
# bulk-dominated ChEES criterion under-serves (BlackJAX's floor, there pi/2 over a sequential
# Welford of the whole window; here by a few power iterations on one step's ensemble, O(n d)).
# Why pi: a length drawn uniformly from (0, T] moves a Gaussian direction of variance lambda
# to a lag-1 autocorrelation of sin(x)/x, x = T / sqrt(lambda), which is zero at x = pi.
# None: no floor.
LENGTH_FLOOR: float | None = math.pi
# The floor applies in the warm-up too. Without it there the draws' worst ESS per draw was the
# same and eight schools' warm-up (1000 steps to 500 draws) about 1.5x shorter on a CPU, but the
# short early trajectories left the ensemble still contracting halfway through a 300-step
# warm-up (seed 001: the pooled metric 2.5x the posterior variance of mu).
FLOOR_IN_WARMUP = True
POWER_ITERATIONS = 3          # per warm-up step, warm-started; 20 for the draws' length
INITIAL_STEP_SIZE = 0.1
LEARNING_RATE = 0.025
DECAY_RATE = 0.5
MAX_LEAPFROG = 1000


class State(NamedTuple):
    chain: Any                 # blackjax DynamicHMCState, batched
    step_size: Any             # (n,), one value shared by every chain
    inverse_mass_matrix: Any   # (n, d)
    num_leapfrog: Any          # () mean integration steps
    draw_keys: Any             # (n, 2)


def _max_bits(s: Any) -> float:
    return float(np.ceil(np.log2(max(s.warmup, 1) + s.draws)))


def _integration_steps(max_bits: float) -> Callable[[Any, Any], Any]:
    from blackjax.mcmc import dynamic_hmc

    def steps(i: Any, num_leapfrog: Any) -> Any:
        return jnp.asarray(jnp.ceil(dynamic_hmc.halton_sequence(i, max_bits) * num_leapfrog),
                           dtype=int)
    return steps


def _ensemble_moments(x: Any) -> tuple[Any, Any]:
    """Cross-chain (mean, variance) of (n, d) positions, ignoring non-finite rows."""
    ok = jnp.all(jnp.isfinite(x), axis=1, keepdims=True)
    w = ok / jnp.maximum(ok.sum(), 2)
    xs = jnp.where(ok, x, 0.0)
    mean = (w * xs).sum(0)
    var = (w * (xs - mean) ** 2).sum(0) * ok.sum() / jnp.maximum(ok.sum() - 1, 1)
    return mean, var


def _lambda_max(x: Any, imm: Any, v: Any, iterations: int = POWER_ITERATIONS
                ) -> tuple[Any, Any]:
    """Top eigenvalue of the ensemble covariance whitened by `imm`, and its eigenvector, by
    power iterations warm-started at `v` (never forming the (d, d) matrix)."""
    ok = jnp.all(jnp.isfinite(x), axis=1, keepdims=True)
    xs = jnp.where(ok, x, 0.0)
    xw = (xs - (xs * ok).sum(0) / jnp.maximum(ok.sum(), 1)) / jnp.sqrt(imm) * ok
    denom = jnp.maximum(ok.sum() - 1, 1)

    for _ in range(iterations):   # unrolled: one fused kernel on a GPU, not a loop
        v = xw.T @ (xw @ v) / denom
        v = v / jnp.maximum(jnp.linalg.norm(v), 1e-300)
    return jnp.maximum(v @ (xw.T @ (xw @ v)) / denom, 1e-12), v


def init(ld: Callable, s: Any, z0: Any, k_warm: Any, k_draw: Any) -> State:
    import optax
    from blackjax.adaptation.chees_adaptation import base
    from blackjax.mcmc import dynamic_hmc

    n, dim = z0.shape
    num_steps = max(s.warmup, 1)
    max_bits = _max_bits(s)
    halton = lambda i: dynamic_hmc.halton_sequence(i, max_bits)  # noqa: E731
    kernel = dynamic_hmc.build_kernel(next_random_arg_fn=lambda i: i + 1,
                                      integration_steps_fn=_integration_steps(max_bits))
    a_init, a_update = base(halton, lambda i: i + 1, optax.adam(LEARNING_RATE),
                            s.target_accept, DECAY_RATE, MAX_LEAPFROG)
    ensemble = MASS_MATRIX == "ensemble"
    start = int(METRIC_START * num_steps) if ensemble else num_steps
    pool_from = max(start, num_steps // 2)

    def one(carry: Any, t: Any) -> Any:
        chains, ad, imm, pooled, v = carry
        length = ad.trajectory_length
        if LENGTH_FLOOR and ensemble and FLOOR_IN_WARMUP:
            lam, v = _lambda_max(chains.position, imm, v)
            floor = jnp.where(t >= start, LENGTH_FLOOR * jnp.sqrt(lam), 0.0)
            length = jnp.minimum(jnp.maximum(length, floor), MAX_LEAPFROG * ad.step_size)
        keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(k_warm)
        new, info = jax.vmap(lambda k, c: kernel(k, c, ld, ad.step_size, imm,
                                                 (length / ad.step_size,)))(keys, chains)
        ad = a_update(ad, info.proposal.position, info.proposal.momentum, chains.position,
                      info.acceptance_rate, info.is_divergent, imm)
        if ensemble:
            _, var = _ensemble_moments(new.position)
            var = jnp.where(jnp.isfinite(var) & (var > 0), var, imm)
            imm = jnp.where(t + 1 >= start, var, imm)
            pooled = pooled + jnp.where(t >= pool_from, var, 0.0)
        return (new, ad, imm, pooled, v), None

    chains = jax.vmap(lambda z: dynamic_hmc.init(z, ld, 0))(z0)
    carry0 = (chains, a_init(0, INITIAL_STEP_SIZE), jnp.ones(dim), jnp.zeros(dim),
              jnp.ones(dim) / math.sqrt(dim))
    (chains, ad, imm, pooled, v), _ = jax.lax.scan(one, carry0, jnp.arange(num_steps))
    step_size = jnp.exp(ad.log_step_size_moving_average)
    length = jnp.exp(ad.log_trajectory_length_moving_average)
    if ensemble and num_steps - pool_from > 0:
        imm = pooled / (num_steps - pool_from)
    if LENGTH_FLOOR and ensemble:
        lam, _ = _lambda_max(chains.position, imm, v, 20)
        length = jnp.minimum(jnp.maximum(length, LENGTH_FLOOR * jnp.sqrt(lam)),
                             MAX_LEAPFROG * step_size)
    # the draws continue the warm-up's Halton sequence, as BlackJAX's chees_adaptation does
    return State(chains, jnp.broadcast_to(step_size, (n,)), jnp.broadcast_to(imm, (n, dim)),
                 length / step_size, k_draw)


def draw_step(ld: Callable, s: Any) -> Callable[[State, Any], tuple[State, Info]]:
    from blackjax.mcmc import dynamic_hmc

    kernel = dynamic_hmc.build_kernel(next_random_arg_fn=lambda i: i + 1,
                                      integration_steps_fn=_integration_steps(_max_bits(s)))

    def draw(state: State, t: Any) -> tuple[State, Info]:
        keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(state.draw_keys)
        chain, info = jax.vmap(lambda k, c: kernel(k, c, ld, state.step_size[0],
                                                   state.inverse_mass_matrix[0],
                                                   (state.num_leapfrog,)))(keys, state.chain)
        depth = jnp.zeros(keys.shape[0], jnp.int32)
        return state._replace(chain=chain), Info(
            chain.position, info.acceptance_rate, info.is_divergent, info.energy, depth,
            info.num_integration_steps.astype(jnp.int32))
    return draw

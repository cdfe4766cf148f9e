"""Stan's windowed adaptation of the step size and the mass matrix, one step at a time.

Stan's warm-up (Stan Reference Manual, "HMC algorithm parameters"; Hoffman & Gelman 2014
for the dual averaging) runs three stages over `num_steps` iterations: a fast window that
adapts only the step size, slow windows doubling in size (25, 50, 100, ...) at the end of
each of which the inverse mass matrix is set to the regularised covariance of the window's
draws and the dual averaging restarts, and a last fast window. The metric is diagonal, or
dense: a dense one also learns the correlations, which is what a posterior with strongly
correlated parameters needs (a diagonal metric leaves NUTS taking maximum-depth trees there).

This is BlackJAX's window adaptation (`blackjax.window_adaptation`) cut into `init` /
`update` / `final` pure functions over a NamedTuple, so that the engine can run warm-up in
chunks and stop between them; the estimators are BlackJAX's (`mass_matrix_adaptation`,
`dual_averaging_adaptation`) and the schedule is its `build_schedule`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

INITIAL_STEP_SIZE = 1.0      # BlackJAX's window_adaptation default


class WindowState(NamedTuple):
    """One chain's adaptation: dual averaging, Welford accumulator and the current values."""

    ss_state: Any
    imm_state: Any
    step_size: Any
    inverse_mass_matrix: Any


@functools.lru_cache(maxsize=32)
def schedule(num_steps: int) -> np.ndarray:
    """(num_steps, 2) int: per step, (0 fast | 1 slow, 1 at the end of a slow window).

    BlackJAX's `build_schedule` (Stan's defaults: a 75-step fast window, slow windows from 25
    steps doubling, a 50-step last fast window; shrunk when warm-up is shorter), written over
    numpy: BlackJAX's builds a Python list, which takes seconds for a long warm-up.
    """
    out = np.zeros((num_steps, 2), np.int32)
    if num_steps < 20:        # too short to adapt a mass matrix: step size only
        return out
    initial, final, first = 75, 50, 25
    if initial + first + final > num_steps:
        initial, final = int(0.15 * num_steps), int(0.1 * num_steps)
        first = num_steps - initial - final
    final_start = num_steps - final
    size, start = first, initial
    while start < final_start:
        current, current_size = start, size
        if 3 * current_size <= final_start - current:
            size = 2 * current_size
        else:
            current_size = final_start - current
        start = current + current_size
        out[current:start, 0] = 1
        out[start - 1, 1] = 1
    return out


@functools.lru_cache(maxsize=32)
def largest_slow_window(num_steps: int) -> int:
    """Draws in the longest slow window: what the last mass-matrix estimate is made from."""
    ends = np.flatnonzero(schedule(num_steps)[:, 1])
    if not len(ends):
        return 0
    starts = np.r_[np.flatnonzero(schedule(num_steps)[:, 0])[0] - 1, ends[:-1]]
    return int(np.max(ends - starts))


def build(target_accept: float, dense: bool) -> tuple[Callable, Callable, Callable]:
    """(init, update, final) of one chain's adaptation."""
    from blackjax.adaptation.mass_matrix import mass_matrix_adaptation
    from blackjax.adaptation.step_size import dual_averaging_adaptation

    mm_init, mm_update, mm_final = mass_matrix_adaptation(not dense)
    da_init, da_update, da_final = dual_averaging_adaptation(target_accept)

    def init(dim: int) -> WindowState:
        imm = mm_init(dim)
        return WindowState(da_init(INITIAL_STEP_SIZE), imm, jnp.asarray(INITIAL_STEP_SIZE),
                           imm.inverse_mass_matrix)

    def fast(ws: WindowState, position: Any, acceptance_rate: Any) -> WindowState:
        ss = da_update(ws.ss_state, acceptance_rate)
        return WindowState(ss, ws.imm_state, jnp.exp(ss.log_step_size), ws.inverse_mass_matrix)

    def slow(ws: WindowState, position: Any, acceptance_rate: Any) -> WindowState:
        ss = da_update(ws.ss_state, acceptance_rate)
        imm = mm_update(ws.imm_state, position)
        return WindowState(ss, imm, jnp.exp(ss.log_step_size), imm.inverse_mass_matrix)

    def window_end(ws: WindowState) -> WindowState:
        imm = mm_final(ws.imm_state)
        ss = da_init(da_final(ws.ss_state))
        return WindowState(ss, imm, jnp.exp(ss.log_step_size), imm.inverse_mass_matrix)

    def update(ws: WindowState, stage: Any, position: Any, acceptance_rate: Any) -> WindowState:
        ws = jax.lax.switch(stage[0], (fast, slow), ws, position, acceptance_rate)
        return jax.lax.cond(stage[1].astype(bool), window_end, lambda w: w, ws)

    def final(ws: WindowState) -> tuple[Any, Any]:
        """(step size, inverse mass matrix) to sample with once warm-up is over."""
        return jnp.exp(ws.ss_state.log_step_size_avg), ws.imm_state.inverse_mass_matrix

    return init, update, final

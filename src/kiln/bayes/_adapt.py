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

A dense metric is where warm-up goes wrong most easily, so its window end (`dense_metric`)
guards it:

- Stan regularises a window's covariance as (n/(n+5)) S + 1e-3 (5/(n+5)) I. The identity
  term is absolute: for a parameter whose posterior variance is far below 1e-3 it dominates
  the smallest directions (posteriordb's kilpisjarvi, a regression on the year with
  correlation -0.9999, has a posterior covariance whose smallest eigenvalue is ~1e-9: the
  identity term set it to 2.4e-5, the step size fell to 0.007 and the bulk ESS to 90).
  kiln applies the same formula in the coordinates scaled by the window's variances, i.e.
  (n/(n+5)) S + 1e-3 (5/(n+5)) diag(S): the same as Stan's at unit scale, and the same
  relative shrinkage at any scale.
- The dense estimate is used only where it is finite and well-conditioned (scaled to unit
  diagonal, its smallest eigenvalue over its largest above `DENSE_MIN_EIG_RATIO`); otherwise
  the window gives Stan's diagonal estimate.
- A chain whose step size collapsed (below `COLLAPSED_STEP_SIZE` at the end of a slow
  window) gets Stan's diagonal estimate for its next window. Such a chain is stuck (in
  arma11, chains that start at |theta| > 1, where the errors grow as theta^t and the
  gradient is ~1e200): its window saw almost no movement in some coordinates, and only the
  absolute 1e-3 term of Stan's estimate gives them room to move again; the scale-free dense
  estimate would keep them stuck. The window after that is dense again if the step size
  recovered.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

INITIAL_STEP_SIZE = 1.0      # BlackJAX's window_adaptation default
STAN_SHRINK_DRAWS = 5        # Stan's regularisation: 5 pseudo-draws ...
STAN_SHRINK_TARGET = 1e-3    # ... of variance 1e-3 (here relative to the window's variance)
DENSE_MIN_EIG_RATIO = 1e-10  # a scaled dense estimate less well-conditioned is not used
COLLAPSED_STEP_SIZE = 1e-4   # a step size below this at a window end: one diagonal window


class WindowState(NamedTuple):
    """One chain's adaptation: dual averaging, Welford accumulator and the current values."""

    ss_state: Any
    imm_state: Any
    step_size: Any
    inverse_mass_matrix: Any


def dense_metric(covariance: Any, count: Any) -> tuple[Any, Any]:
    """(inverse mass matrix (d, d), whether it is dense) from one window's covariance.

    Stan's regularisation, scaled by the window's variances (the module docstring says why);
    Stan's diagonal estimate where the dense one is not finite or not well-conditioned.
    """
    w, shrink = _weights(count)
    cov = (covariance + covariance.T) / 2          # Welford's outer products: not quite symmetric
    var = jnp.diag(cov)
    dense = w * cov + shrink * jnp.diag(var)
    diagonal = diagonal_metric(cov, count)
    scale = jnp.sqrt(jnp.where(var > 0, var, 1.0))
    eig = jnp.linalg.eigvalsh(dense / jnp.outer(scale, scale))
    ok = (jnp.all(jnp.isfinite(cov)) & jnp.all(var > 0)
          & (eig[0] > DENSE_MIN_EIG_RATIO * eig[-1]))
    return jnp.where(ok, dense, diagonal), ok


def diagonal_metric(covariance: Any, count: Any) -> Any:
    """Stan's diagonal estimate, (n/(n+5)) var + 1e-3 (5/(n+5)), as a (d, d) matrix."""
    w, shrink = _weights(count)
    return jnp.diag(w * jnp.diag(covariance) + shrink)


def _weights(count: Any) -> tuple[Any, Any]:
    return (count / (count + STAN_SHRINK_DRAWS),
            STAN_SHRINK_TARGET * STAN_SHRINK_DRAWS / (count + STAN_SHRINK_DRAWS))


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
    from blackjax.adaptation.mass_matrix import (
        MassMatrixAdaptationState,
        mass_matrix_adaptation,
        welford_algorithm,
    )
    from blackjax.adaptation.step_size import dual_averaging_adaptation

    mm_init, mm_update, mm_final = mass_matrix_adaptation(not dense)
    wc_init, _, wc_final = welford_algorithm(not dense)
    da_init, da_update, da_final = dual_averaging_adaptation(target_accept)

    def init(dim: int) -> WindowState:
        imm = mm_init(dim)
        return WindowState(da_init(INITIAL_STEP_SIZE), imm, jnp.asarray(INITIAL_STEP_SIZE),
                           imm.inverse_mass_matrix)

    def fast(ws: WindowState, position: Any, acceptance_rate: Any) -> WindowState:
        ss = da_update(ws.ss_state, acceptance_rate)
        return ws._replace(ss_state=ss, step_size=jnp.exp(ss.log_step_size))

    def slow(ws: WindowState, position: Any, acceptance_rate: Any) -> WindowState:
        ss = da_update(ws.ss_state, acceptance_rate)
        imm = mm_update(ws.imm_state, position)
        return ws._replace(ss_state=ss, imm_state=imm, step_size=jnp.exp(ss.log_step_size))

    def window_end(ws: WindowState) -> WindowState:
        step = da_final(ws.ss_state)
        ss = da_init(step)
        if not dense:
            imm = mm_final(ws.imm_state)
            return ws._replace(ss_state=ss, imm_state=imm, step_size=jnp.exp(ss.log_step_size),
                               inverse_mass_matrix=imm.inverse_mass_matrix)
        collapsed = step < COLLAPSED_STEP_SIZE
        cov, count, _ = wc_final(ws.imm_state.wc_state)
        metric, _ = dense_metric(cov, count)
        metric = jnp.where(collapsed, diagonal_metric(cov, count), metric)
        imm = MassMatrixAdaptationState(metric, wc_init(cov.shape[0]))
        return ws._replace(ss_state=ss, imm_state=imm, step_size=jnp.exp(ss.log_step_size),
                           inverse_mass_matrix=metric)

    def update(ws: WindowState, stage: Any, position: Any, acceptance_rate: Any) -> WindowState:
        ws = jax.lax.switch(stage[0], (fast, slow), ws, position, acceptance_rate)
        return jax.lax.cond(stage[1].astype(bool), window_end, lambda w: w, ws)

    def final(ws: WindowState) -> tuple[Any, Any]:
        """(step size, inverse mass matrix) to sample with once warm-up is over."""
        return jnp.exp(ws.ss_state.log_step_size_avg), ws.imm_state.inverse_mass_matrix

    return init, update, final

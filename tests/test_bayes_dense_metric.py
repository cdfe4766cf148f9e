"""The dense metric's window end: Stan's regularisation made scale-free, and the fallbacks
to Stan's diagonal estimate (an ill-conditioned estimate, a collapsed step size)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

import kiln.bayes._engine  # noqa: F401 - float64, as on the agent
from kiln.bayes import _adapt

N = 200


def _stan(cov: np.ndarray, n: int) -> np.ndarray:
    """Stan's dense regularisation, written out: (n/(n+5)) S + 1e-3 (5/(n+5)) I."""
    return n / (n + 5) * cov + 1e-3 * 5 / (n + 5) * np.eye(len(cov))


def _is_diagonal(m) -> bool:
    m = np.asarray(m)
    return bool(np.all(m == np.diag(np.diag(m))))


def test_a_unit_scale_estimate_is_regularised_as_stan_does():
    cov = np.array([[1.0, 0.6], [0.6, 1.0]])
    metric, ok = _adapt.dense_metric(jnp.asarray(cov), N)
    assert bool(ok)
    np.testing.assert_allclose(np.asarray(metric), _stan(cov, N), rtol=1e-12)


def test_the_regularisation_is_scale_free():
    # kilpisjarvi's posterior: sds 30 and 0.0075 at correlation -0.99998
    sd, rho = np.array([30.0, 0.0075]), -0.99998
    cov = np.outer(sd, sd) * np.array([[1.0, rho], [rho, 1.0]])
    unit = np.array([[1.0, rho], [rho, 1.0]])
    metric, ok = _adapt.dense_metric(jnp.asarray(cov), N)
    assert bool(ok)
    np.testing.assert_allclose(np.asarray(metric), np.outer(sd, sd) * _stan(unit, N), rtol=1e-9)
    # the smallest posterior direction keeps its scale (within the 5-pseudo-draw shrinkage);
    # Stan's absolute 1e-3 I would have made it ~10^4 times too wide
    post_min = np.linalg.eigvalsh(cov)[0]
    assert np.linalg.eigvalsh(np.asarray(metric))[0] < 5 * post_min
    assert np.linalg.eigvalsh(_stan(cov, N))[0] > 1e3 * post_min


def test_an_estimate_with_a_coordinate_that_never_moved_falls_back_to_stans_diagonal():
    cov = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 2.0]])   # a stuck coordinate
    metric, ok = _adapt.dense_metric(jnp.asarray(cov), N)
    assert not bool(ok)
    np.testing.assert_allclose(np.asarray(metric), np.diag(np.diag(_stan(cov, N))), rtol=1e-12)


def test_a_non_finite_or_indefinite_estimate_falls_back_to_stans_diagonal():
    for cov in (np.array([[1.0, np.nan], [np.nan, 1.0]]),
                np.array([[1.0, 1.5], [1.5, 1.0]])):                       # not a covariance
        metric, ok = _adapt.dense_metric(jnp.asarray(cov), N)
        assert not bool(ok)
        assert _is_diagonal(metric)


def _window_end(ws: _adapt.WindowState) -> _adapt.WindowState:
    _, update, _ = _adapt.build(0.8, dense=True)
    return update(ws, jnp.array([1, 1]), jnp.zeros(2), jnp.asarray(0.8))


def _state_after_a_window(step_size: float, metric: np.ndarray):
    """A dense chain's adaptation at the end of a slow window of correlated draws."""
    from blackjax.adaptation.mass_matrix import MassMatrixAdaptationState, welford_algorithm
    from blackjax.adaptation.step_size import dual_averaging_adaptation

    da_init, _, _ = dual_averaging_adaptation(0.8)
    _, wc_update, _ = welford_algorithm(False)
    init, _, _ = _adapt.build(0.8, dense=True)
    ws = init(2)
    wc = ws.imm_state.wc_state
    rng = np.random.default_rng(0)
    for x in rng.multivariate_normal([0, 0], [[1.0, 0.9], [0.9, 1.0]], size=99):
        wc = wc_update(wc, jnp.asarray(x))
    ss = da_init(step_size)._replace(log_step_size_avg=jnp.log(step_size))
    return ws._replace(ss_state=ss, imm_state=MassMatrixAdaptationState(jnp.asarray(metric), wc),
                       inverse_mass_matrix=jnp.asarray(metric))


def test_a_window_end_gives_a_dense_metric_while_the_step_size_holds():
    ws = _window_end(_state_after_a_window(0.5, np.array([[1.0, 0.5], [0.5, 1.0]])))
    assert not _is_diagonal(ws.inverse_mass_matrix)


def test_a_step_size_collapsed_under_a_dense_metric_gives_one_diagonal_window():
    ws = _window_end(_state_after_a_window(1e-6, np.array([[1.0, 0.5], [0.5, 1.0]])))
    assert _is_diagonal(ws.inverse_mass_matrix)
    # Stan's diagonal estimate of the window's 100 draws (the last one, 0, taken at its end)
    draws = np.vstack([np.random.default_rng(0).multivariate_normal(
        [0, 0], [[1.0, 0.9], [0.9, 1.0]], size=99), np.zeros(2)])
    np.testing.assert_allclose(np.diag(np.asarray(ws.inverse_mass_matrix)),
                               np.diag(_stan(np.cov(draws.T), 100)), rtol=1e-9)
    # once the step size holds under that diagonal metric, the next window is dense again
    ws = _window_end(_state_after_a_window(0.5, np.asarray(ws.inverse_mass_matrix)))
    assert not _is_diagonal(ws.inverse_mass_matrix)


def test_a_step_size_collapsed_under_the_initial_unit_metric_gives_a_diagonal_window_too():
    # a chain stuck where it started: the window says nothing trustworthy about correlations
    ws = _window_end(_state_after_a_window(1e-6, np.eye(2)))
    assert _is_diagonal(ws.inverse_mass_matrix)

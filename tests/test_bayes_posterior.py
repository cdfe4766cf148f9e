"""Posterior: arrays per chain and pooled, ArviZ, files, information criteria, predictive draws."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kiln.bayes import (  # noqa: E402
    Posterior,
    load,
    posterior_predictive,
    prior_predictive,
)
from kiln.bayes import _engine as engine  # noqa: E402
from kiln.bayes._examples import SEED_001_OBSERVATIONS, seed_001, seed_001_posterior_means
from kiln.bayes._posterior import from_result  # noqa: E402
from kiln.errors import SpecError

SEED_Y = list(SEED_001_OBSERVATIONS)
seed_model = seed_001


@pytest.fixture(scope="module")
def post() -> Posterior:
    r = engine.run(seed_model().to_dict(), 4, seed=1, warmup=500, draws=1000)
    return from_result(r, {"y_obs": np.asarray(SEED_Y)})


def test_per_chain_and_pooled_arrays(post):
    assert len(post.chains) == 4 and post.chains[0]["mu"].shape == (1000,)
    assert post["mu"].shape == (4000,)
    np.testing.assert_array_equal(post["mu"][:1000], post.chains[0]["mu"])
    assert set(post) == {"mu", "sigma"}


def test_summary_has_the_diagnostics(post):
    s = post.summary()
    assert list(s.columns) == ["mean", "sd", "hdi_3%", "hdi_97%", "mcse_mean", "mcse_sd",
                               "ess_bulk", "ess_tail", "r_hat"]
    assert s.loc["mu", "r_hat"] < 1.01 and s.loc["sigma", "ess_bulk"] > 800
    truth = seed_001_posterior_means()
    for name in ("mu", "sigma"):   # the quadrature's means, within 4 of ArviZ's own MCSE
        assert abs(s.loc[name, "mean"] - truth[name]) <= 4 * s.loc[name, "mcse_mean"] + 2e-4


def test_summary_shows_the_digits_that_judge_convergence():
    rng = np.random.default_rng(0)
    tiny = Posterior({"x": 1e-3 * rng.standard_normal((4, 1000)) + np.arange(4)[:, None] * 3e-5})
    s = tiny.summary()
    assert 0 < s.loc["x", "mcse_mean"] < 1e-4            # ArviZ's default shows 0.000
    assert s.loc["x", "r_hat"] != round(s.loc["x", "r_hat"], 2)
    assert "e-05" in tiny._repr_html_() or "e-06" in tiny._repr_html_()


def test_loo_with_two_likelihood_sites_asks_which_one():
    rng = np.random.default_rng(1)
    two = Posterior({"mu": rng.standard_normal((2, 100))},
                    log_likelihood={"y_a": rng.normal(-1, 0.1, (2, 100, 5)),
                                    "y_b": rng.normal(-2, 0.1, (2, 100, 3))})
    for criterion in (two.loo, two.waic):
        with pytest.raises(SpecError, match="2 likelihood sites \\('y_a', 'y_b'\\); name the "
                                            "one to use, e.g. var_name='y_a'") as e:
            criterion()
        assert e.value.field == "var_name"
    assert np.isfinite(two.loo(var_name="y_b").elpd_loo)


def test_divergences_and_saturated_trees_are_warned_with_what_to_try():
    n = np.zeros((2, 100), bool)
    n[0, :3] = True
    depth = np.full((2, 100), 4)
    depth[1, :60] = 10
    p = Posterior({"x": np.zeros((2, 100))},
                  {"diverging": n, "tree_depth": depth, "max_tree_depth": np.array([10, 10])})
    assert p.sampler_diagnostics() == {"chain": [0, 1], "divergences": [3, 0],
                                       "max_tree_depth": [10, 10], "at_max_tree_depth": [0.0, 0.6]}
    div, sat = p.warnings
    assert div.startswith("3 divergent transition(s) after warm-up") and "target_accept" in div
    assert sat.startswith("60% of draws hit max_tree_depth=10") and "mass_matrix='dense'" in sat


def test_a_clean_run_has_no_warnings(post):
    assert post.warnings == [] and post.sampler_diagnostics()["divergences"] == [0, 0, 0, 0]


def test_idata_has_posterior_stats_observations_and_log_likelihood(post):
    idata = post.idata
    assert set(idata.groups()) >= {"posterior", "sample_stats", "observed_data", "log_likelihood"}
    assert set(idata.sample_stats.data_vars) >= {"diverging", "energy", "tree_depth", "step_size"}
    assert idata.log_likelihood["y_obs"].shape == (4, 1000, 10)
    np.testing.assert_array_equal(idata.observed_data["y_obs"].values, SEED_Y)


def test_waic_and_loo_come_from_the_recorded_log_likelihood(post):
    w, loo = post.waic(), post.loo()
    assert np.isfinite(w.elpd_waic) and np.isfinite(loo.elpd_loo)
    assert w.elpd_waic == pytest.approx(loo.elpd_loo, abs=0.5)   # close for a well-behaved model
    assert 1.0 < w.p_waic < 3.0                                     # two parameters


def test_save_and_load_round_trip(post, tmp_path):
    path = post.save(tmp_path / "run.nc")
    back = load(path)
    np.testing.assert_array_equal(back["sigma"], post["sigma"])
    np.testing.assert_array_equal(back.stats["step_size"], post.stats["step_size"])
    assert back.placement == post.placement and back.warnings == post.warnings


def test_plots_and_html(post):
    assert post.plot_trace().shape == (2, 2)
    assert post.plot_pair() is not None
    html = post._repr_html_()
    assert "<table" in html and "r_hat" in html and "4 chains" in html


def test_prior_predictive_draws_observed_sites_too():
    draws = prior_predictive(seed_model(), 2000, seed=0)
    assert draws["mu"].shape == (2000,) and draws["y_obs"].shape == (2000, 10)
    assert draws["mu"].std() == pytest.approx(10.0, rel=0.1)   # the prior, not the data


def test_posterior_predictive_replicates_the_observations(post):
    rep = posterior_predictive(seed_model(), post, seed=0)
    assert rep["y_obs"].shape == (4, 1000, 10)
    assert rep["y_obs"].mean() == pytest.approx(np.mean(SEED_Y), abs=0.05)

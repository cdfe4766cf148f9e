"""Posterior: arrays per chain and pooled, ArviZ, files, information criteria, predictive draws."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kiln.bayes import (  # noqa: E402
    Posterior,
    engine,
    load,
    posterior_predictive,
    prior_predictive,
)
from kiln.bayes.examples import SEED_001_OBSERVATIONS, seed_001
from kiln.bayes.posterior import from_result  # noqa: E402

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
    assert s.loc["mu", "mean"] == pytest.approx(2.25, abs=0.03)
    assert s.loc["mu", "r_hat"] < 1.01 and s.loc["sigma", "ess_bulk"] > 800


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

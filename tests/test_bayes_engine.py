"""The sampler engine in-process: the compiled-program cache, keys, warmup modes, ChEES,
device choice, progress and numerically failed chains."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from kiln.bayes import Custom, HalfNormal, Model, Normal
from kiln.bayes import _engine as engine
from kiln.bayes._examples import check_seed_001
from kiln.errors import SpecError

SEED_Y = [2.1, 2.5, 1.8, 2.3, 2.7, 1.9, 2.4, 2.2, 2.6, 2.0]


def seed_model(y=SEED_Y, prior_sd=10.0) -> dict:
    return (Model()
            .rv("mu", Normal(0.0, prior_sd))
            .rv("sigma", HalfNormal(2.0))
            .rv("y", Normal("mu", "sigma"))
            .obs("y_obs", "y", y)).to_dict()


RUN = {"warmup": 500, "draws": 1000}   # the seed demo's settings: one compiled program


def test_a_result_has_every_documented_field():
    r = engine.run(seed_model(), 4, seed=1, **RUN)
    assert r["samples"]["mu"].shape == (4, 1000) and r["samples"]["sigma"].shape == (4, 1000)
    assert r["stats"]["step_size"].shape == (4,)
    for k in ("acceptance_rate", "diverging", "tree_depth", "energy", "num_steps"):
        assert r["stats"][k].shape == (4, 1000), k
    assert r["log_likelihood"]["y_obs"].shape == (4, 1000, 10)
    assert set(r["timing"]) == {"compile_s", "sample_s", "total_s"}
    assert r["device"] == "cpu" and r["device_reason"]
    assert r["warnings"] == [] and r["failed_chains"] == []
    assert np.all(r["samples"]["sigma"] > 0)


def test_new_parameter_values_and_data_reuse_the_compiled_program():
    cache = engine.ProgramCache()
    first = engine.run(seed_model(), 4, seed=1, cache=cache, **RUN)
    assert first["compiled"] and cache.compiles == 1
    again = engine.run(seed_model(y=[x + 5 for x in SEED_Y], prior_sd=3.0), 4, seed=2, cache=cache, **RUN)
    assert again["compiled"] is False and again["compiles"] == 1 and cache.hits == 1
    assert again["samples"]["mu"].mean() == pytest.approx(7.0, abs=0.5)  # it used the new data
    engine.run(seed_model(y=SEED_Y[:5]), 4, seed=1, cache=cache, **RUN)  # new shape: compiles
    assert cache.compiles == 2
    info = cache.info()
    assert {k: info[k] for k in ("compiles", "hits", "programs", "models")} == {
        "compiles": 2, "hits": 1, "programs": 2, "models": 2}
    assert info["programs_misses"] == 2 and info["models_hits"] == 1 and info["models_misses"] == 2


def test_a_chain_gives_the_same_draws_whatever_batch_it_runs_in():
    model = seed_model()
    together = engine.run(model, 4, seed=1, **RUN)
    alone = engine.run(model, [2], seed=1, **RUN)
    pair = engine.run(model, [3, 1], seed=1, **RUN)
    np.testing.assert_array_equal(alone["samples"]["mu"][0], together["samples"]["mu"][2])
    np.testing.assert_array_equal(pair["samples"]["sigma"][1], together["samples"]["sigma"][1])
    np.testing.assert_array_equal(pair["samples"]["mu"][0], together["samples"]["mu"][3])


def test_the_seed_decides_the_draws():
    a = engine.run(seed_model(), 4, seed=1, **RUN)["samples"]["mu"]
    b = engine.run(seed_model(), 4, seed=1, **RUN)["samples"]["mu"]
    c = engine.run(seed_model(), 4, seed=2, **RUN)["samples"]["mu"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_progress_is_reported_from_inside_the_run():
    seen: list[dict] = []
    engine.run(seed_model(), 4, seed=1, progress=seen.append, **RUN)
    sampling = [p for p in seen if p["phase"] == "sampling"]
    done = [p["draws_done"] for p in sampling]
    # at least every PROGRESS_EVERY draws, in order, up to the last one
    assert done[-1] == 1000 and np.all(np.diff([0, *done]) > 0)
    assert np.all(np.diff([0, *done]) <= engine.PROGRESS_EVERY)
    assert len(sampling[-1]["divergences"]) == 4 and len(sampling[-1]["step_size"]) == 4
    assert seen[-1]["phase"] == "done"


def test_shared_warmup_gives_parameters_every_chain_can_start_from():
    model = seed_model()
    w = engine.warmup(model, [0, 1], seed=1, warmup=500, mass_matrix="diag")
    assert w["step_size"] > 0 and w["inverse_mass_matrix"].shape == (2,)
    assert w["positions"].shape == (2, 2)
    adaptation = {"step_size": w["step_size"], "inverse_mass_matrix": w["inverse_mass_matrix"],
                  "positions": w["positions"][[0, 1, 0, 1]]}
    r = engine.run(model, 4, seed=1, warmup=100, draws=1000, adaptation=adaptation)
    np.testing.assert_allclose(r["stats"]["step_size"], w["step_size"])
    check_seed_001(r["samples"])


def test_chees_samples_many_chains_with_one_trajectory_length():
    r = engine.run(seed_model(), 16, seed=1, warmup=300, draws=300, method="chees")
    assert r["samples"]["mu"].shape == (16, 300)
    assert len(set(np.round(r["stats"]["step_size"], 12))) == 1   # shared by all chains
    check_seed_001(r["samples"], min_ess=300)
    assert not r["failed_chains"]


def test_a_user_init_is_where_the_chains_start():
    r = engine.run(seed_model(), 4, seed=1, warmup=0, draws=1, init={"mu": 2.2, "sigma": 0.4})
    assert np.all(np.abs(r["samples"]["mu"] - 2.2) < 1.0)
    with pytest.raises(SpecError, match="init: missing \\['sigma'\\]"):
        engine.run(seed_model(), 4, warmup=0, draws=1, init={"mu": 2.2})
    with pytest.raises(SpecError, match="init: outside the support"):
        engine.run(seed_model(), 4, warmup=0, draws=1, init={"mu": 2.2, "sigma": -1.0})


def test_a_chain_never_starts_where_the_gradient_overflows():
    # log p = -exp(60 x): past x ~ 0.7 the gradient is over 1e20 (arma11's |theta| > 1 is such a
    # region); a chain started there cannot move (every proposal is rejected), so its one draw
    # after one transition would still be there. 64 chains: ~21 would start there by Stan's rule.
    model = Model().rv("x", Custom(lambda v: -jnp.exp(60.0 * v))).to_dict()
    r = engine.run(model, 64, seed=3, warmup=0, draws=1)
    x = np.asarray(r["samples"]["x"]).reshape(-1)  # one draw per chain (some may diverge)
    assert np.all(np.isfinite(x)) and x.max() < 0.7, np.sort(x)[-5:]
    assert x.min() < -1.0  # the starts still cover the prior's box below the bound


def test_a_numerically_failed_chain_is_reported_not_hidden():
    broken = Model().rv("x", Custom(lambda v: jnp.nan * v)).to_dict()
    r = engine.run(broken, 4, seed=0, warmup=20, draws=20)
    assert r["failed_chains"] == [0, 1, 2, 3]
    assert ("chain 0 failed numerically: no initial point in 100 tries with a finite log density"
            in r["warnings"][0])


def test_device_choice_on_cpu_and_gpu_agents():
    dev, kind, why = engine.choose_device("auto", "cpu", 4, 10)
    assert kind == "cpu" and why == "the agent has no GPU"
    with pytest.raises(SpecError, match="device: 'gpu' was asked for but this agent has no GPU"):
        engine.choose_device("gpu", "cpu", 4, 10)
    with pytest.raises(SpecError, match="device: 'tpu'"):
        engine.choose_device("tpu", "cpu", 4, 10)


@pytest.mark.parametrize("opts, field", [
    ({"draws": 0}, "draws"), ({"warmup": -1}, "warmup"), ({"seed": -1}, "seed"),
    ({"target_accept": 1.0}, "target_accept"), ({"method": "hmc"}, "method"),
    ({"max_tree_depth": 0}, "max_tree_depth"), ({"mass_matrix": "full"}, "mass_matrix"),
])
def test_bad_options_are_spec_errors(opts, field):
    with pytest.raises(SpecError) as e:
        engine.run(seed_model(), 4, **opts)
    assert e.value.field == field


def test_a_watched_run_cut_into_chunks_gives_the_same_draws_as_one_program():
    model = seed_model()
    whole = engine.run(model, 4, seed=1, **RUN)
    checks = []
    chunked = engine.run(model, 4, seed=1, should_stop=lambda: checks.append(1) and False,
                         progress=lambda p: None, **RUN)
    assert len(checks) > 3                       # it was cut, and checked between the pieces
    for k in ("mu", "sigma"):
        np.testing.assert_array_equal(chunked["samples"][k], whole["samples"][k])
    np.testing.assert_array_equal(chunked["stats"]["tree_depth"], whole["stats"]["tree_depth"])
    np.testing.assert_array_equal(chunked["log_likelihood"]["y_obs"], whole["log_likelihood"]["y_obs"])


def test_dense_mass_matrix_is_adapted_for_a_small_model_and_diag_on_request():
    dense = engine.run(seed_model(), 4, seed=1, mass_matrix="dense", **RUN)
    diag = engine.run(seed_model(), 4, seed=1, mass_matrix="diag", **RUN)
    auto = engine.run(seed_model(), 4, seed=1, **RUN)
    assert dense["_inverse_mass_matrix"].shape == (4, 2, 2)
    assert diag["_inverse_mass_matrix"].shape == (4, 2)
    np.testing.assert_array_equal(auto["samples"]["mu"], dense["samples"]["mu"])  # 2 <= 50: dense
    assert dense["stats"]["max_tree_depth"].tolist() == [10] * 4


def test_shared_warmup_carries_a_dense_metric():
    w = engine.warmup(seed_model(), [0, 1, 2, 3], seed=1, warmup=500, mass_matrix="dense")
    assert w["inverse_mass_matrix"].shape == (2, 2)
    adaptation = {"step_size": w["step_size"], "inverse_mass_matrix": w["inverse_mass_matrix"],
                  "positions": w["positions"]}
    r = engine.run(seed_model(), 4, seed=1, warmup=100, draws=200, adaptation=adaptation)
    np.testing.assert_allclose(r["_inverse_mass_matrix"][0], w["inverse_mass_matrix"])

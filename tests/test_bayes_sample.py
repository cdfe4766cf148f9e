"""kiln.sample on real Ray: the seed 001 demo, shipped model functions, warmup modes,
placement independence and a node lost mid-run."""

from __future__ import annotations

import threading
import time

import arviz as az
import jax.numpy as jnp
import numpy as np
import pytest

import kiln
from kiln.bayes import Custom, Model, Normal, StudentT
from kiln.bayes._examples import SEED_001_OBSERVATIONS, check_seed_001, seed_001
from kiln.errors import CallTimeoutError, SpecError, UnknownReferenceError

SEED_Y = list(SEED_001_OBSERVATIONS)
seed_model = seed_001


def test_a_bad_model_fails_on_the_driver_before_any_cluster_is_needed(no_cluster):
    bad = Model().rv("mu", Normal(0.0, 1.0)).rv("y", Normal("mu", "sgima")).obs("o", "y", [1.0])
    with pytest.raises(UnknownReferenceError, match="y.dist.sigma: refers to 'sgima'"):
        kiln.sample(bad, chains=2)
    with pytest.raises(SpecError, match="warmup_mode: 'per_chain' or 'shared'"):
        kiln.sample(seed_model(), warmup_mode="both")


def test_the_seed_001_demo(embedded):
    post = kiln.sample(seed_model(), chains=4, warmup=500, draws=1000, on="local", seed=1,
                       timeout=120, progress=True)
    assert post.chains[0]["mu"].shape == (1000,) and post["mu"].shape == (4000,)
    check_seed_001(post.samples, min_ess=800)     # the quadrature's means, within 4 MCSE
    s = post.summary()
    assert s.loc["mu", "r_hat"] < 1.01 and s.loc["sigma", "r_hat"] < 1.01
    assert set(post.idata.groups()) >= {"posterior", "sample_stats", "observed_data", "log_likelihood"}
    [p] = post.placement
    assert p["chains"] == [0, 1, 2, 3] and p["node"] == "local" and p["device"] == "cpu"
    assert p["device_reason"] and p["seconds"] > 0
    again = kiln.sample(seed_model(), chains=4, warmup=500, draws=1000, on="local", seed=1,
                        progress=True)
    assert again.placement[0]["compiled"] is False          # the agent kept the program
    np.testing.assert_array_equal(again["mu"], post["mu"])
    info = embedded.agents(on="local")[0].info()["bayes"]
    assert info["compiles"] >= 1 and info["hits"] >= 1


def test_a_call_past_its_timeout_is_retried_then_reported(embedded):
    model = Model().rv("x", StudentT(3.0, 0.0, 1.0))   # a new structure: compiling takes seconds
    with pytest.raises(CallTimeoutError, match=r"ran past its timeout of 0.05 s with chains "
                                                r"\[0, 1\] unfinished on kiln-agent:local:cpu"):
        kiln.sample(model, chains=2, warmup=50, draws=50, timeout=0.05, retries=1, progress=False)
    post = kiln.sample(seed_model(), chains=2, warmup=500, draws=1000, timeout=120, progress=False)
    assert post["mu"].shape == (2000,)                   # the agent stayed usable


def numpyro_model(y=None):
    import numpyro
    import numpyro.distributions as dist

    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def test_a_numpyro_model_function_ships_by_value(embedded):
    post = kiln.sample(numpyro_model, data={"y": np.asarray(SEED_Y)}, chains=4, warmup=500,
                       draws=1000, seed=1, progress=False)
    check_seed_001(post.samples, min_ess=800)
    assert post.log_likelihood["y"].shape == (4, 1000, 10)


def test_a_custom_log_density_written_here_runs_on_the_agent(embedded):
    scale = 2.0

    def half_normal_logp(v, s):      # a closure over this test's local
        return -0.5 * (v / (s * scale / 2.0)) ** 2 - jnp.log(s)

    model = Model().rv("x", Custom(half_normal_logp, support="positive", s=1.0))
    post = kiln.sample(model, chains=4, warmup=500, draws=1000, seed=2, progress=False)
    # a half-normal with scale 1: mean sqrt(2/pi), sd sqrt(1 - 2/pi)
    ess = float(az.ess(post.samples["x"]))
    assert ess >= 400
    assert abs(post["x"].mean() - np.sqrt(2 / np.pi)) <= 4 * np.sqrt(1 - 2 / np.pi) / np.sqrt(ess)


def test_shared_warmup_broadcasts_one_adaptation(embedded):
    post = kiln.sample(seed_model(), chains=4, warmup=500, draws=1000, seed=1,
                       warmup_mode="shared", progress=False)
    ops = [p["op"] for p in post.placement]
    assert ops == ["warmup", "sample"]
    assert len(set(np.round(post.stats["step_size"], 12))) == 1
    check_seed_001(post.samples, min_ess=800)


@pytest.mark.multinode
@pytest.mark.slow
def test_draws_do_not_depend_on_placement(three_nodes):
    one = kiln.sample(seed_model(), chains=4, warmup=500, draws=1000, on="n1", seed=5, progress=False)
    spread = kiln.sample(seed_model(), chains=4, warmup=500, draws=1000, on="all", seed=5,
                         progress=False)
    assert {p["node"] for p in spread.placement} == {"n1", "n2", "n3"}
    for name in ("mu", "sigma"):
        np.testing.assert_array_equal(spread.samples[name], one.samples[name])


@pytest.mark.multinode
@pytest.mark.slow
def test_a_node_lost_mid_run_costs_no_chain(three_nodes):
    # long enough that n3 is still busy (compiling, or loading its program from the
    # persistent cache and sampling) when it is removed
    opts = {"chains": 6, "warmup": 400, "draws": 40_000, "seed": 9, "progress": False,
            "log_likelihood": False}
    box: dict = {}

    def run():
        try:
            box["post"] = kiln.sample(seed_model(), on="all", **opts)
        except BaseException as e:  # noqa: BLE001 - re-raised in the test thread
            box["error"] = e

    t = threading.Thread(target=run)
    t.start()
    time.sleep(1.5)
    three_nodes.remove("n3")
    t.join(timeout=300)
    assert "error" not in box, box.get("error")
    post = box["post"]
    assert post.num_chains == 6
    assert "n3" not in {p["node"] for p in post.placement}
    assert sum(p["retries"] for p in post.placement) >= 1
    assert any("re-run" in w for w in post.warnings)
    reference = kiln.sample(seed_model(), on="n1", **opts)
    for name in ("mu", "sigma"):
        np.testing.assert_array_equal(post.samples[name], reference.samples[name])

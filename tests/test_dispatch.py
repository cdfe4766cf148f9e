"""kiln.dispatch: seed 000's promise on the embedded default and on a 3-node cluster."""

import math

import arviz as az
import numpy as np
import pytest

import kiln
from kiln.errors import CallTimeoutError, SpecError, UnknownNodeError

SPEC = {"dist": "normal", "mu": 0.0, "sigma": 1.0}


def test_the_embedded_default_end_to_end(embedded):
    node = embedded.nodes()[0].name
    r = kiln.dispatch(node, SPEC, num_warmup=200, num_samples=200)
    assert r.samples["x"].shape == (200,)
    assert np.isfinite(r.samples["x"]).all()
    assert set(r.stats) >= {"step_size", "acceptance_rate", "divergences", "tree_depth"}
    assert r.stats["step_size"] > 0 and 0 < r.stats["acceptance_rate"] <= 1
    assert set(r.timing) >= {"compile_s", "sample_s", "total_s", "round_trip_s"}
    assert (r.node, r.device) == ("local", "cpu")


def test_normal_draws_match_the_truth_within_monte_carlo_error(embedded):
    mu, sigma = 1.5, 2.0
    r = kiln.dispatch("local", {"dist": "normal", "mu": mu, "sigma": sigma},
                      num_warmup=500, num_samples=1000, chains=4, seed=3)
    draws = np.stack([c["x"] for c in r.chains])                 # (chains, draws)
    ess = float(az.ess(draws))
    mcse_mean = sigma / math.sqrt(ess)
    assert abs(draws.mean() - mu) <= 4 * mcse_mean
    # MCSE of the sd of a normal: sigma / sqrt(2 ESS)
    assert abs(draws.std(ddof=1) - sigma) <= 4 * sigma / math.sqrt(2 * ess)


def test_the_same_seed_gives_the_same_draws(embedded):
    a = kiln.dispatch("local", SPEC, num_warmup=100, num_samples=100, seed=7)
    b = kiln.dispatch("local", SPEC, num_warmup=100, num_samples=100, seed=7)
    c = kiln.dispatch("local", SPEC, num_warmup=100, num_samples=100, seed=8)
    np.testing.assert_array_equal(a.samples["x"], b.samples["x"])
    assert not np.array_equal(a.samples["x"], c.samples["x"])


def test_new_parameter_values_do_not_compile_again(embedded):
    agent = embedded.agents(on="local")[0]
    kiln.dispatch("local", {"dist": "gamma", "concentration": 2.0, "rate": 1.0},
                  num_warmup=50, num_samples=50)
    before = agent.info()["bayes"]["compiles"]
    r = kiln.dispatch("local", {"dist": "gamma", "concentration": 5.0, "rate": 3.0},
                      num_warmup=50, num_samples=50)
    assert r.compiled is False
    assert agent.info()["bayes"]["compiles"] == before
    # it sampled the new Gamma(5, 3): mean 5/3, sd sqrt(5)/3, within 4 Monte Carlo errors
    ess = float(az.ess(r.chains[0]["x"][None]))
    assert abs(r.mean() - 5.0 / 3.0) <= 4 * math.sqrt(5.0) / 3.0 / math.sqrt(ess)


@pytest.mark.parametrize("spec, field, words", [
    ({"dist": "normall", "mu": 0.0, "sigma": 1.0}, "dist", "normal"),
    ({"dist": "normal", "mu": 0.0}, "sigma", "missing"),
    ({"dist": "normal", "mu": 0.0, "sigma": 1.0, "nu": 3}, "nu", "unknown"),
    ({"dist": "normal", "mu": 0.0, "sigma": -1.0}, "sigma", "> 0"),
    ({"dist": "halfnormal", "sigma": 0.0}, "sigma", "> 0"),
    ({"dist": "normal", "mu": float("nan"), "sigma": 1.0}, "mu", "finite"),
    ({"dist": "normal", "mu": "zero", "sigma": 1.0}, "mu", "number"),
])
def test_bad_specs_name_the_field_and_the_agent_serves_the_next_call(embedded, spec, field, words):
    with pytest.raises(SpecError) as err:
        kiln.dispatch("local", spec, num_warmup=50, num_samples=50)
    assert err.value.field.endswith(field), err.value
    assert words in str(err.value)
    assert kiln.dispatch("local", SPEC, num_warmup=50, num_samples=50).samples["x"].shape == (50,)


@pytest.mark.parametrize("opts, field", [
    ({"method": "hmc"}, "method"), ({"mass_matrix": "full"}, "mass_matrix"),
    ({"retries": 2}, "retries"),     # kiln.sample's option, not dispatch's
    ({"num_samples": 0}, "num_samples"),
    ({"num_warmup": -1}, "num_warmup"),
    ({"chains": 1.5}, "chains"),
    ({"seed": "one"}, "seed"),
    ({"num_sample": 10}, "num_sample"),
    ({"timeout": -3}, "timeout"),
])
def test_bad_options_name_the_option(embedded, opts, field):
    with pytest.raises(SpecError) as err:
        kiln.dispatch("local", SPEC, **opts)
    assert err.value.field == field


def test_an_unknown_node_lists_the_known_nodes(embedded):
    with pytest.raises(UnknownNodeError, match="known nodes: local"):
        kiln.dispatch("gpu7", SPEC)


def test_a_timed_out_call_is_cancelled_and_the_agent_stays_usable(embedded):
    # A new model structure must compile first: far longer than 10 ms.
    with pytest.raises(CallTimeoutError, match="timeout"):
        kiln.dispatch("local", {"dist": "studentt", "df": 4.0, "loc": 0.0, "scale": 1.0},
                      num_warmup=2000, num_samples=2000, timeout=0.01)
    r = kiln.dispatch("local", SPEC, num_warmup=50, num_samples=50, timeout=120)
    assert r.samples["x"].shape == (50,)


@pytest.mark.multinode
def test_dispatch_lands_on_the_named_node(three_nodes):
    r = kiln.dispatch("n2", SPEC, num_warmup=100, num_samples=100)
    assert r.node == "n2"
    n2 = next(n for n in three_nodes.kiln.nodes() if n.name == "n2")
    ran_on = three_nodes.kiln.agents(on="n2")[0].node_id
    assert ran_on == n2.node_id == three_nodes.nodes["n2"].node_id


@pytest.mark.multinode
def test_combine_pools_two_nodes(three_nodes):
    parts = [kiln.dispatch(n, SPEC, num_warmup=100, num_samples=200, seed=i)
             for i, n in enumerate(("n1", "n3"))]
    both = kiln.combine(parts)
    assert both.samples["x"].shape == (400,)
    assert both.node == "n1+n3"
    np.testing.assert_array_equal(both.samples["x"][:200], parts[0].samples["x"])
    # the pooled draws are N(0, 1)'s: mean and sd within 4 Monte Carlo errors of the truth
    draws = np.stack([c["x"] for c in both.chains])                # (2 nodes, 200)
    ess = float(az.ess(draws))
    assert ess >= 100
    assert abs(both.mean()) <= 4 / math.sqrt(ess)
    assert abs(both.std() - 1.0) <= 4 / math.sqrt(2 * ess)

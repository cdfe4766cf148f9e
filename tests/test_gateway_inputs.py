"""What reaches the gateway before any encoding: bad text, bodies, keys, content types, the
OpenAI surface. A real uvicorn server on loopback with no cluster (its fallback encodes), real
HTTP clients, raw sockets for the slow ones, and the official ``openai`` client."""

from __future__ import annotations

import base64
import re
import socket
import time

import httpx
import numpy as np
import pytest

from kiln.serve._app import create_app
from kiln.serve._gateway import Limits
from kiln.serve._server import BackgroundServer

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def server():
    """Fallback only (no Ray); short header and body timeouts so the slow cases end soon."""
    app = create_app(None, limits=Limits(max_body_bytes=4096, max_texts=16), body_timeout=1.0)
    with BackgroundServer(app, timeout_header=1.0) as s:
        yield s


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    key_file = tmp_path_factory.mktemp("key") / "key"
    key_file.write_text(KEY + "\n")
    app = create_app(None, api_key_file=str(key_file), fallback=False, body_timeout=30.0)
    with BackgroundServer(app) as s:
        yield s


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def metric(client: httpx.Client, name: str) -> float:
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def raw(url: str, data: bytes) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=15)
    sock.sendall(data)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (bounded by the timeout)."""
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


# -- bad text is the client's error, decided before any encoder runs ----------------------------
def test_a_lone_surrogate_is_a_422_naming_the_text_and_nothing_is_encoded(client):
    before = metric(client, "kiln_gateway_requests_local_fallback_total")
    r = client.post("/infer", content=b'{"texts": ["fine", "bad \\ud800"]}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and "retry-after" not in r.headers
    assert r.json()["error"]["field"] == "texts[1]" and "surrogate" in r.json()["error"]["message"]
    r = client.post("/v1/embeddings", content=b'{"input": "\\udfff"}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "input[0]"
    assert metric(client, "kiln_gateway_requests_local_fallback_total") == before


# -- bodies --------------------------------------------------------------------------------------
def test_a_chunked_body_over_the_limit_is_413(client):
    def chunks():
        yield b'{"texts": ["'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"]}'

    r = client.post("/infer", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["field"] == "body"
    assert client.post("/infer", json={"texts": ["still serving"]}).status_code == 200


def test_a_body_that_never_arrives_is_answered_408_and_closed(server):
    sock = raw(server.url, b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                           b"\r\nContent-Length: 100\r\n\r\n{\"texts\":")
    answer = read_all(sock)  # returns only because the server closes the connection
    assert answer.startswith(b"HTTP/1.1 408") and b'"field":"body"' in answer


def test_a_connection_that_sends_no_request_is_closed(server):
    for first in (b"", b"POST /infer HTTP/1.1\r\nHost: x\r\n"):  # nothing, or half the headers
        sock = raw(server.url, first)
        started = time.monotonic()
        assert read_all(sock) == b""
        assert time.monotonic() - started < 10  # the server's header timeout is 1 s


def test_parse_errors_name_the_field(client):
    r = client.post("/infer", content=b'{"texts": ["unterminated', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == {
        "type": "invalid_json", "field": "body", "message": r.json()["error"]["message"]}
    r = client.post("/v1/embeddings", json={"input": [None]})
    assert r.status_code == 422 and r.json()["error"]["field"] == "input[0]"
    r = client.post("/v1/embeddings", json={"input": ["ok", 2.5]})
    assert r.status_code == 422 and r.json()["error"]["field"] == "input[1]"
    r = client.post("/infer/parallel?strategy=fastest", json={"texts": ["x"]})
    assert r.status_code == 422 and r.json()["error"]["field"] == "strategy"


# -- keys and content types ------------------------------------------------------------------------
def test_the_key_is_checked_before_the_body_is_read(keyed):
    # 100 bytes declared, 9 sent: answered at once, not after a body timeout (30 s here)
    sock = raw(keyed.url, b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                          b"\r\nContent-Length: 100\r\n\r\n{\"texts\":")
    started = time.monotonic()
    answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 401") and b'"field":"Authorization"' in answer
    assert time.monotonic() - started < 10
    with httpx.Client(base_url=keyed.url, timeout=60) as c:
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 503
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_a_browser_form_post_needs_a_key(client, keyed):
    body = b'{"texts": ["hello"]}'
    plain = {"content-type": "text/plain"}
    # no key: curl and scripts (no Origin) are served; a web page (Origin) is not
    assert client.post("/infer", content=body, headers=plain).status_code == 200
    r = client.post("/infer", content=body, headers={**plain, "origin": "https://evil.example"})
    assert r.status_code == 415 and r.json()["error"]["field"] == "content-type"
    r = client.post("/infer", content=body, headers={"content-type": "multipart/form-data; b=x"})
    assert r.status_code == 415
    # with a key, the key is what protects it
    with httpx.Client(base_url=keyed.url, timeout=60) as c:
        r = c.post("/infer", content=body, headers={**plain, "origin": "https://evil.example",
                                                     "Authorization": f"Bearer {KEY}"})
        assert r.status_code == 503  # read as JSON and served (this one's fallback is off)


# -- health ---------------------------------------------------------------------------------------
def test_no_agent_is_degraded_but_alive_and_not_ready(client):
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "degraded", "agents_ready": 0, "fallback": True,
                             "cluster": "off"}
    assert client.get("/readyz").status_code == 503
    cluster = client.get("/cluster").json()["gateway"]
    assert cluster["fallback_loaded"] is True  # at start, not on a request's path


def test_the_gateway_takes_what_it_loaded_out_of_later_garbage_collections():
    import gc

    before = gc.get_freeze_count()
    app = create_app(None)  # its fallback model is loaded as it starts
    with BackgroundServer(app) as s:
        assert app.state.settle_s > 0
        assert gc.get_freeze_count() > before  # kiln._gc: full collections paused the loop
        time.sleep(0.3)
        gateway = httpx.get(s.url + "/cluster").json()["gateway"]
        metrics = httpx.get(s.url + "/metrics").text
    # what a slow request may have waited for: the loop's lateness and the collections
    assert gateway["loop_lag"]["ticks"] >= 5 and gateway["loop_lag"]["every_ms"] == 20
    assert gateway["gc"]["collections"][2] >= 1  # the settle's, at least
    # and in Prometheus' form, read when scraped
    full = re.search(r'^kiln_gateway_gc_collections_total\{generation="2"\} (\S+)$', metrics, re.M)
    assert full and float(full.group(1)) >= 1
    assert re.search(r'^kiln_gateway_event_loop_late_total\{over_ms="50"\} \S+$', metrics, re.M)
    assert "kiln_gateway_gc_seconds_total" in metrics


# -- the official OpenAI client ---------------------------------------------------------------
def test_the_openai_client_lists_models_and_embeds_text_and_token_ids(server):
    import openai
    from transformers import AutoTokenizer

    from kiln.embeddings._models import resolve

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["default", "large", "multilingual"]
    assert client.models.retrieve("default").id == "default"
    texts = ["the cluster is the API", "one text"]
    floats = client.embeddings.create(model="default", input=texts, encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1] and len(floats.data[0].embedding) == 384
    # the client asks for base64 by default and decodes it itself
    b64 = client.embeddings.create(model="default", input=texts)
    assert np.allclose(b64.data[1].embedding, floats.data[1].embedding, atol=1e-6)
    ids = AutoTokenizer.from_pretrained(resolve("default").path)(texts, add_special_tokens=False)
    by_ids = client.embeddings.create(model="default", input=ids["input_ids"],
                                      encoding_format="float")
    assert np.allclose([d.embedding for d in by_ids.data], [d.embedding for d in floats.data],
                       atol=1e-5)
    with pytest.raises(openai.UnprocessableEntityError, match="check_embedding_ctx_length"):
        client.embeddings.create(model="default", input=[[10**7]])
    raw_b64 = httpx.post(server.url + "/v1/embeddings",
                         json={"input": texts[0], "encoding_format": "base64"}).json()
    vector = np.frombuffer(base64.b64decode(raw_b64["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(vector, floats.data[0].embedding, atol=1e-6)


def test_an_unexpected_error_is_a_500_that_tells_the_client_nothing_but_logs_all(caplog):
    app = create_app(None, fallback=False)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret detail at /srv/kiln/keys")

    with caplog.at_level("ERROR", logger="kiln.serve"), BackgroundServer(app) as s:
        r = httpx.get(s.url + "/boom", timeout=30)
    assert r.status_code == 500
    assert r.json()["error"]["type"] == "internal_error"
    assert "secret" not in r.text and "RuntimeError" not in r.text
    [record] = [r for r in caplog.records if "GET /boom failed" in r.getMessage()]
    assert record.exc_info and "secret detail" in str(record.exc_info[1])


def test_an_unexpected_error_on_the_fast_lane_is_the_same_500(caplog):
    app = create_app(None, fallback=False)

    async def boom(*args, **kwargs):  # a fault in the gateway itself, past every known error
        raise RuntimeError("secret detail at /srv/kiln/keys")

    app.state.kiln.gateway.encode = boom
    with caplog.at_level("ERROR", logger="kiln.serve"), BackgroundServer(app) as s:
        r = httpx.post(s.url + "/infer", json={"texts": ["a well-formed request"]}, timeout=30)
    assert r.status_code == 500
    assert r.json()["error"]["type"] == "internal_error"
    assert "secret" not in r.text and "RuntimeError" not in r.text
    [record] = [r for r in caplog.records if "POST /infer failed" in r.getMessage()]
    assert "secret detail" in str(record.exc_info[1])

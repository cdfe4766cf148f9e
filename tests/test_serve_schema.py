"""schemathesis against the gateway's own /openapi.json: no input makes it answer 500."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from kiln.serve._app import create_app
from kiln.serve._gateway import Limits
from kiln.serve._server import BackgroundServer


def fuzz(operation, mode: GenerationMode, url: str, seen: list[tuple[str, int]]) -> None:
    @settings(max_examples=12, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case):
        response = case.call(base_url=url, timeout=120)
        seen.append((operation.label, response.status_code))
        if operation.label == "GET /readyz":  # 503 by design: this gateway has no agent
            assert response.status_code == 503 and "error" in response.json()
            return
        assert response.status_code < 500, (operation.label, case.body, response.text)
        if response.status_code >= 400 and operation.label != "GET /metrics":
            assert "error" in response.json()

    try:
        check()
    except Unsatisfiable:
        # An operation with no parameters and no body has no invalid form to generate.
        assert mode is GenerationMode.NEGATIVE, operation.label


def test_no_generated_request_gets_a_server_error(no_cluster):
    # Fallback only (no Ray): every valid request really encodes, in the gateway process.
    app = create_app(None, limits=Limits(max_texts=16, max_chars=2_000))
    seen: list[tuple[str, int]] = []
    with BackgroundServer(app) as server:
        schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
        for result in schema.get_all_operations():
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                fuzz(result.ok(), mode, server.url, seen)
    labels = {label for label, _ in seen}
    assert {"POST /infer", "POST /infer/parallel", "POST /v1/embeddings", "GET /cluster"} <= labels
    assert any(status == 200 for label, status in seen if label == "POST /v1/embeddings")
    assert any(status == 422 for _, status in seen)

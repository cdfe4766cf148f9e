"""The seed's endpoints, ``/infer`` and ``/infer/parallel``, and what every embedding endpoint
shares: checking the texts before any agent is called, and running a request through the
gateway with its errors mapped to HTTP.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Query, Request, Security
from fastapi.responses import Response
from fastapi.security import HTTPBearer

from kiln.errors import DeadlineExceededError, EmbedInputError, ModelNotAvailableError, SpecError
from kiln.serve._gateway import Outcome, QueueFull, Served, Unavailable
from kiln.serve._middleware import ApiError
from kiln.serve._schemas import (
    ErrorResponse,
    InferRequest,
    InferResponse,
    ParallelResponse,
    Strategy,
)

ERRORS = {code: {"model": ErrorResponse} for code in (401, 408, 413, 415, 422, 503, 504)}
# Declares the key in the OpenAPI schema; ``Intake`` checks it, before the body is read.
bearer = HTTPBearer(auto_error=False, description="the key in --api-key-file")
KEYED = [Security(bearer)]

router = APIRouter(responses=ERRORS, dependencies=KEYED)


def served(request: Request) -> Served:
    return request.app.state.kiln


def check(s: Served, texts: list[str], model: str, field: str) -> None:
    """Refuse what no agent could encode, before any agent is called (413 / 422 naming it)."""
    limits = s.limits
    if not texts:
        raise ApiError(422, "invalid_request", f"{field}: at least one text is needed", field)
    if len(texts) > limits.max_texts:
        raise ApiError(413, "too_many_texts", f"{field}: {len(texts)} texts, more than the "
                       f"limit of {limits.max_texts} per request", field)
    for i, text in enumerate(texts):
        where = f"{field}[{i}]"
        if len(text) > limits.max_chars:
            raise ApiError(413, "text_too_long", f"{where}: {len(text)} characters, more "
                           f"than the limit of {limits.max_chars}", where)
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as err:
                # JSON may carry "\ud800"; no tokenizer can take it. A client error, decided
                # here: it used to reach every agent and the fallback, then answer 503.
                raise ApiError(422, "invalid_text", f"{where}: a lone surrogate "
                               f"{text[err.start]!r} at character {err.start} is not Unicode "
                               "text; send valid UTF-8", where) from None
    if model not in s.models:
        raise ApiError(422, "model_not_available", f"model: unknown model {model!r}; this "
                       f"gateway serves {', '.join(s.models)}", "model")


async def run(s: Served, endpoint: str, texts: list[str], model: str,
              strategy: str | None, parallel: bool = False) -> Outcome:
    """The gateway's ``Outcome`` for ``texts``, counted in the metrics; errors as HTTP."""
    gateway, metrics = s.gateway, s.metrics
    metrics.requests.labels(endpoint=endpoint).inc()
    started = time.perf_counter()
    try:
        gateway.admit()
    except QueueFull as err:
        metrics.failed.labels(endpoint=endpoint, reason="queue_full").inc()
        raise ApiError(503, "queue_full", f"{err}; retry shortly", None,
                       {"Retry-After": "1"}) from err
    gateway.inflight += 1
    metrics.inflight.inc()
    try:
        outcome = await gateway.encode(texts, model, strategy, parallel)
    except Unavailable as err:
        metrics.failed.labels(endpoint=endpoint, reason="unavailable").inc()
        raise ApiError(503, "unavailable", str(err), None, {"Retry-After": "5"}) from err
    except DeadlineExceededError as err:
        metrics.failed.labels(endpoint=endpoint, reason="deadline").inc()
        raise ApiError(504, "deadline_exceeded", str(err), None) from err
    except ModelNotAvailableError as err:
        metrics.failed.labels(endpoint=endpoint, reason="model").inc()
        raise ApiError(422, "model_not_available", f"model: {err}", "model") from err
    except (EmbedInputError, SpecError) as err:
        metrics.failed.labels(endpoint=endpoint, reason="input").inc()
        raise ApiError(422, "invalid_request", str(err), str(err).split(":")[0]) from err
    finally:
        gateway.inflight -= 1
        metrics.inflight.dec()
    took = time.perf_counter() - started
    metrics.texts.inc(len(texts))
    metrics.truncated.inc(outcome.truncated)
    metrics.latency.labels(endpoint=endpoint).observe(took)
    return outcome._replace(stages={**(outcome.stages or {}), "total": took})


def server_timing(out: Outcome) -> bytes:
    """The W3C ``Server-Timing`` header of an answer: the milliseconds of each stage (queue,
    cluster, agent; total: the gateway's, from admission to outcome). A client can tell its own and the
    network's share from the gateway's, and the gateway's from the agent's; browsers' devtools
    show it."""
    return ", ".join(f"{k};dur={v * 1000:.3f}" for k, v in (out.stages or {}).items()).encode()


@router.post("/infer", response_model=InferResponse)
async def infer(request: Request, body: InferRequest, strategy: Strategy | None = Query(None)
                ) -> Response:
    """Embed texts on one agent (per text, with consistent hashing); the seed's shape."""
    s = served(request)
    check(s, body.texts, body.model, "texts")
    out = await run(s, "/infer", body.texts, body.model, strategy)
    return json_response(infer_body(out), out)


@router.post("/infer/parallel", response_model=ParallelResponse)
async def infer_parallel(request: Request, body: InferRequest,
                         strategy: Strategy | None = Query(None)) -> Response:
    """Split the texts over every ready agent, in the order the strategy gives; order kept."""
    s = served(request)
    check(s, body.texts, body.model, "texts")
    out = await run(s, "/infer/parallel", body.texts, body.model, strategy, parallel=True)
    return json_response({"embeddings": out.embeddings, "nodes_used": len(out.nodes),
                          "nodes": out.nodes, "cached": out.cached, "truncated": out.truncated,
                          "fallback": out.fallback}, out)


def infer_body(out: Outcome) -> dict[str, Any]:
    """``/infer``'s answer (``InferResponse``)."""
    return {"embeddings": out.embeddings, "node": ",".join(out.nodes), "cached": out.cached,
            "truncated": out.truncated, "tokens": out.tokens, "fallback": out.fallback}


def json_response(content: Any, out: Outcome | None = None) -> Response:
    """``content`` as JSON; with the ``Outcome`` it came from, its Server-Timing header too."""
    headers = {"server-timing": server_timing(out).decode()} if out is not None else None
    return Response(json_bytes(content), media_type="application/json", headers=headers)


def json_bytes(content: Any) -> bytes:
    # Built by hand: FastAPI would re-validate thousands of floats against the response model,
    # and the json module spends 10.7 ms on one 64 x 384 response where orjson, writing float32
    # arrays directly in their shortest exact form, spends 0.5 ms (and 45% fewer bytes).
    return orjson.dumps(content, default=_plain, option=orjson.OPT_SERIALIZE_NUMPY)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):  # arrays orjson does not take natively (non-contiguous)
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")

"""The FastAPI app: the seed's endpoints, OpenAI's ``/v1/embeddings``, status and metrics.

Every error is JSON, ``{"error": {"type", "message", "field"}}``, naming the field at fault;
bodies are parsed as JSON only (nothing from HTTP is ever unpickled); the body size is capped
before it is read; with an API key, every endpoint but ``/healthz`` and the docs wants
``Authorization: Bearer KEY``.
"""

from __future__ import annotations

import base64
import secrets
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from kiln.errors import EmbedInputError, GatewayError, ModelNotAvailableError, SpecError
from kiln.serve.gateway import Gateway, Limits, QueueFull, Unavailable
from kiln.serve.metrics import Metrics
from kiln.serve.schemas import (
    ClusterResponse,
    EmbeddingsRequest,
    EmbeddingsResponse,
    ErrorResponse,
    HealthResponse,
    InferRequest,
    InferResponse,
    ParallelResponse,
    Strategy,
)

_ERRORS = {code: {"model": ErrorResponse} for code in (401, 413, 422, 503)}
_CURRENT = object()


class ApiError(Exception):
    """An error answered as JSON with ``status`` (raised inside the endpoints)."""

    def __init__(self, status: int, kind: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.field = status, kind, message, field
        self.headers = headers


def _error(status: int, kind: str, message: str, field: str | None = None,
           headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message, "field": field}, **extra},
                        status_code=status, headers=headers)


def _field(loc: tuple | list) -> str:
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "header", "path") else loc)
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


def _read_key(api_key: str | None, api_key_file: str | None) -> str | None:
    if api_key_file:
        path = Path(api_key_file).expanduser()
        try:
            api_key = path.read_text().strip()
        except OSError as err:
            raise GatewayError(f"api key file {path}: cannot be read ({err})") from err
        if not api_key:
            raise GatewayError(f"api key file {path} is empty; put the key in it")
    return api_key


class _BodyIsJson:
    """ASGI middleware: a POST body without a JSON content type is read as JSON.

    Every endpoint takes JSON and none takes a form, but ``curl -d '{...}'``, the seed's and the
    README's way to call the gateway, labels its body application/x-www-form-urlencoded, which
    FastAPI would refuse with a 422 that names no real problem.
    """

    _JSON = (b"content-type", b"application/json")

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST":
            headers = list(scope.get("headers") or [])
            kind = dict(headers).get(b"content-type", b"").split(b";")[0].strip().lower()
            if kind in (b"", b"application/x-www-form-urlencoded", b"text/plain"):
                others = [(k, v) for k, v in headers if k != b"content-type"]
                scope = {**scope, "headers": [*others, self._JSON]}
        await self.app(scope, receive, send)


class _BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes gets 413 before the app parses it."""

    class _TooLarge(Exception):
        pass

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._reject(scope, receive, send)
        seen = 0
        started = False

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise self._TooLarge()
            return message

        async def sending(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, sending)
        except self._TooLarge:
            if not started:
                await self._reject(scope, receive, send)

    async def _reject(self, scope: dict, receive: Any, send: Any) -> None:
        response = _error(413, "payload_too_large",
                          f"request body is larger than {self.limit} bytes", "body")
        await response(scope, receive, send)


def create_app(cluster: Any = _CURRENT, *, strategy: str = "round_robin",
               api_key: str | None = None, api_key_file: str | None = None,
               limits: Limits | None = None, fallback: bool = True, timeout: float = 30.0,
               retries: int = 2, refresh_s: float = 1.0, models: list[str] | None = None
               ) -> FastAPI:
    """The gateway app for ``cluster`` (default: the connected one, or none: fallback only).

    ``strategy``: round_robin | least_loaded | consistent_hash (a request may choose another
    with ``?strategy=``). ``models``: names clients may ask for (default: the aliases
    default, large, multilingual; directories on the nodes are not exposed unless listed).
    """
    if cluster is _CURRENT:
        from kiln import cluster as _cluster

        try:
            cluster = _cluster.current()
        except Exception:
            cluster = None
    limits = limits or Limits()
    key = _read_key(api_key, api_key_file)
    allowed = list(models or ("default", "large", "multilingual"))
    metrics = Metrics()
    gateway = Gateway(cluster, strategy=strategy, metrics=metrics, timeout=timeout,
                      retries=retries, fallback=fallback, refresh_s=refresh_s, limits=limits)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await gateway.start()
        yield
        await gateway.stop()

    app = FastAPI(title="kiln gateway", version="0.1.0", lifespan=lifespan,
                  description="Embedding inference across a kiln cluster (seed 002).")
    app.state.gateway = gateway
    app.state.metrics = metrics
    app.add_middleware(_BodyLimit, limit=limits.max_body_bytes)
    app.add_middleware(_BodyIsJson)
    bearer = HTTPBearer(auto_error=False, description="the key in --api-key-file")

    # -- errors ------------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        return _error(err.status, err.kind, err.message, err.field, err.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        errors = err.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
        where = _field(first.get("loc", ()))
        message = first.get("msg", "invalid request")
        kind = "invalid_json" if first.get("type") == "json_invalid" else "invalid_request"
        if kind == "invalid_json":
            where, message = "body", f"is not valid JSON ({message})"
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
                  for e in errors]
        return _error(422, kind, f"{where}: {message}", where, detail=detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return _error(err.status_code, "http_error", str(err.detail), None,
                      getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        return _error(500, "internal_error", f"{type(err).__name__}: {err}")

    # -- dependencies ------------------------------------------------------------------------------
    async def authorized(credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
        if key is None:
            return
        if credentials is None or not secrets.compare_digest(credentials.credentials.encode(),
                                                             key.encode()):
            raise ApiError(401, "unauthorized", "missing or wrong API key: send "
                           "'Authorization: Bearer KEY'", "Authorization",
                           {"WWW-Authenticate": "Bearer"})

    def check(texts: list[str], model: str, field: str) -> None:
        if not texts:
            raise ApiError(422, "invalid_request", f"{field}: at least one text is needed", field)
        if len(texts) > limits.max_texts:
            raise ApiError(413, "too_many_texts", f"{field}: {len(texts)} texts, more than the "
                           f"limit of {limits.max_texts} per request", field)
        for i, text in enumerate(texts):
            if len(text) > limits.max_chars:
                where = f"{field}[{i}]" if field.endswith("s") or field == "input" else field
                raise ApiError(413, "text_too_long", f"{where}: {len(text)} characters, more "
                               f"than the limit of {limits.max_chars}", where)
        if model not in allowed:
            raise ApiError(422, "model_not_available", f"model: unknown model {model!r}; this "
                           f"gateway serves {', '.join(allowed)}", "model")

    async def run(endpoint: str, texts: list[str], model: str, strategy: str | None,
                  parallel: bool = False) -> Any:
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
        except ModelNotAvailableError as err:
            metrics.failed.labels(endpoint=endpoint, reason="model").inc()
            raise ApiError(422, "model_not_available", f"model: {err}", "model") from err
        except (EmbedInputError, SpecError) as err:
            metrics.failed.labels(endpoint=endpoint, reason="input").inc()
            raise ApiError(422, "invalid_request", str(err), str(err).split(":")[0]) from err
        finally:
            gateway.inflight -= 1
            metrics.inflight.dec()
        metrics.texts.inc(len(texts))
        metrics.truncated.inc(outcome.truncated)
        metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - started)
        return outcome

    # -- endpoints ---------------------------------------------------------------------------
    @app.post("/infer", response_model=InferResponse, responses=_ERRORS,
              dependencies=[Security(authorized)])
    async def infer(body: InferRequest, strategy: Strategy | None = Query(None)) -> Response:
        """Embed texts on one agent (per text, with consistent hashing); the seed's shape."""
        check(body.texts, body.model, "texts")
        out = await run("/infer", body.texts, body.model, strategy)
        return _json({"embeddings": out.embeddings, "node": ",".join(out.nodes),
                      "cached": out.cached, "truncated": out.truncated, "tokens": out.tokens,
                      "fallback": out.fallback})

    @app.post("/infer/parallel", response_model=ParallelResponse, responses=_ERRORS,
              dependencies=[Security(authorized)])
    async def infer_parallel(body: InferRequest) -> Response:
        """Split the texts over every ready agent; order preserved."""
        check(body.texts, body.model, "texts")
        out = await run("/infer/parallel", body.texts, body.model, None, parallel=True)
        return _json({"embeddings": out.embeddings, "nodes_used": len(out.nodes),
                      "nodes": out.nodes, "cached": out.cached, "truncated": out.truncated,
                      "fallback": out.fallback})

    @app.post("/v1/embeddings", response_model=EmbeddingsResponse, responses=_ERRORS,
              dependencies=[Security(authorized)])
    async def embeddings(body: EmbeddingsRequest, strategy: Strategy | None = Query(None)
                         ) -> Response:
        """OpenAI-compatible embeddings (``input`` a text or a list; float or base64)."""
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        check(texts, body.model, "input")
        out = await run("/v1/embeddings", texts, body.model, strategy)
        data = []
        for i, vector in enumerate(out.embeddings):
            value: Any = (base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
                          if body.encoding_format == "base64" else vector)
            data.append({"object": "embedding", "embedding": value, "index": i})
        return _json({"object": "list", "data": data, "model": body.model,
                      "usage": {"prompt_tokens": out.tokens, "total_tokens": out.tokens}})

    @app.get("/cluster", response_model=ClusterResponse, responses=_ERRORS,
             dependencies=[Security(authorized)])
    async def cluster_status() -> Response:
        """This gateway, each agent online/offline with its info, and totals."""
        return _json(await gateway.status())

    @app.get("/metrics", responses=_ERRORS, dependencies=[Security(authorized)],
             response_class=Response)
    async def prometheus() -> Response:
        """Prometheus text exposition of the gateway's metrics."""
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/healthz", response_model=HealthResponse)
    async def healthz() -> Response:
        """Liveness: the gateway serves (with agents, or through its local fallback)."""
        return _json({"status": "ok", "agents_ready": len(gateway.agents),
                      "fallback": gateway.fallback})

    return app


def _json(content: Any) -> Response:
    # Built by hand: FastAPI would re-validate thousands of floats against the response model,
    # and the json module spends 10.7 ms on one 64 x 384 response where orjson, writing float32
    # arrays directly in their shortest exact form, spends 0.5 ms (and 45% fewer bytes).
    return Response(orjson.dumps(content, default=_plain, option=orjson.OPT_SERIALIZE_NUMPY),
                    media_type="application/json")


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):  # arrays orjson does not take natively (non-contiguous)
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")

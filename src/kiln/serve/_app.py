"""The FastAPI app: the seed's endpoints, OpenAI's ``/v1/...``, status, health and metrics.

``create_app`` assembles one router per concern (``embed_api``: /infer, /infer/parallel;
``openai_api``: /v1/embeddings, /v1/models; ``ops_api``: /cluster, /metrics, /healthz,
/readyz) over one ``Gateway`` (routing, failover, fallback). In front of all of FastAPI
(``GatewayApp.front``): ``Intake`` (API key, content type, body limits and timeouts) and,
inside it, ``FastLane`` (a well-formed ``POST /infer`` or ``/v1/embeddings`` of text answered
without FastAPI's machinery; serve/_fast.py).

Every error is JSON, ``{"error": {"type", "message", "field"}}``, naming the field at fault;
bodies are parsed as JSON only (nothing from HTTP is ever unpickled); with an API key, every
endpoint but ``/healthz``, ``/readyz`` and the docs wants ``Authorization: Bearer KEY``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from kiln import __version__
from kiln._gc import settle, watch
from kiln.errors import NotConnectedError
from kiln.serve._attach import ClusterLink
from kiln.serve._fast import FastLane
from kiln.serve._gateway import Gateway, Limits, Served
from kiln.serve._metrics import Metrics
from kiln.serve._middleware import ApiError, Intake, error_response, internal_error
from kiln.serve._options import read_key

log = logging.getLogger("kiln.serve")

_CURRENT = object()
DEFAULT_MODELS = ("default", "large", "multilingual")


def create_app(cluster: Any = _CURRENT, *, strategy: str = "round_robin",
               api_key: str | None = None, api_key_file: str | None = None,
               limits: Limits | None = None, fallback: bool = True, timeout: float = 30.0,
               retries: int = 2, refresh_s: float = 1.0, models: list[str] | None = None,
               address: str | None = None, connect: Callable[[str | None], Any] | None = None,
               on_lost: Callable[[], None] | None = None,
               on_returned: Callable[[], None] | None = None, body_timeout: float = 30.0
               ) -> FastAPI:
    """The gateway app for ``cluster`` (default: the connected one, or none: fallback only).

    ``strategy``: round_robin | least_loaded | consistent_hash (a request may choose another
    with ``?strategy=``). ``timeout``: one deadline per request, across every attempt.
    ``models``: names clients may ask for (default: the aliases default, large,
    multilingual; directories on the nodes are not exposed unless listed). ``connect``
    (with ``address``): attach later, when ``cluster`` is None or the cluster was lost
    (``kiln serve --allow-no-cluster``); ``on_lost``: called once when the attached cluster
    stops answering, ``on_returned`` once when, lost, its head listens again.
    """
    if cluster is _CURRENT:
        from kiln import cluster as _cluster

        try:
            cluster = _cluster.current()
        except NotConnectedError:  # the gateway starts without a cluster and attaches later
            log.warning("kiln serve: no cluster is connected: %s until one attaches",
                        "serving from the local fallback" if fallback else "every request fails")
            cluster = None
    limits = limits or Limits()
    key = read_key(api_key, api_key_file)
    metrics = Metrics()
    link = ClusterLink(cluster, address=address, connect=connect, on_lost=on_lost,
                       on_returned=on_returned)
    gateway = Gateway(link, strategy=strategy, metrics=metrics, timeout=timeout,
                      retries=retries, fallback=fallback, refresh_s=refresh_s, limits=limits)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        watch()  # this worker's collections and pauses, in /cluster (kiln._gc)
        await gateway.start()
        # Ray, FastAPI and the fallback model are loaded: out of later full collections,
        # which would otherwise pause the event loop (kiln._gc)
        app.state.settle_s = settle()
        yield
        await gateway.stop()
        for hook in app.state.after_stop:
            hook()

    app = GatewayApp(title="kiln gateway", version=__version__, lifespan=lifespan,
                     description="Embedding inference across a kiln cluster.")
    app.state.kiln = Served(gateway, metrics, limits, list(models or DEFAULT_MODELS))
    app.state.gateway = gateway
    app.state.metrics = metrics
    app.state.after_stop = []  # called once the server has drained and the gateway stopped
    app.state.draining = False  # set, not absent: a missing name costs Starlette an exception
    # FastLane inside Intake: the key and the body limits come before it.
    app.front = Intake(FastLane(app.ordinary, served=app.state.kiln), key=key,
                       max_body_bytes=limits.max_body_bytes, body_timeout=body_timeout)
    _errors(app)

    from kiln.serve import _embed_api as embed_api
    from kiln.serve import _openai_api as openai_api
    from kiln.serve import _ops_api as ops_api

    for module in (embed_api, openai_api, ops_api):
        app.include_router(module.router)
    return app


class GatewayApp(FastAPI):
    """FastAPI with ``front`` (``Intake`` and ``FastLane``) before all of it, not among its
    middleware: a request the lane answers no longer passes FastAPI's and Starlette's outer
    layers (error and telemetry wrappers, environment lookups), 8% of a worker's py-spy
    samples at 64 one-text clients on the VM. Whatever the lane does not take goes on to
    ``ordinary``: all of FastAPI, its error handlers included."""

    front: Any = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.front is None:
            return await super().__call__(scope, receive, send)
        scope["app"] = self  # as Starlette sets it: Intake reads the app's state
        await self.front(scope, receive, send)

    async def ordinary(self, scope: dict, receive: Any, send: Any) -> None:
        await super().__call__(scope, receive, send)


def _errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        return error_response(err.status, err.kind, err.message, err.field, err.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        errors = err.errors()
        # A union (OpenAI's input: a text, texts, or token ids) reports one error per member:
        # the one that reaches deepest into the value names the item at fault.
        first = max(errors, key=lambda e: len(_parts(e.get("loc", ()))), default=None) or {
            "loc": ("body",), "msg": "invalid request"}
        where = _field(first.get("loc", ()))
        message = first.get("msg", "invalid request")
        kind = "invalid_json" if first.get("type") == "json_invalid" else "invalid_request"
        if kind == "invalid_json":
            ctx = first.get("ctx") or {}
            where, message = "body", f"is not valid JSON ({ctx.get('error') or message})"
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
                  for e in errors]
        return error_response(422, kind, f"{where}: {message}", where, detail=detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        field = "body" if err.status_code == 400 else ("path" if err.status_code in (404, 405)
                                                        else None)
        return error_response(err.status_code, "http_error", str(err.detail), field,
                              getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        return internal_error(request.method, request.url.path, err)


_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}


def _parts(loc: tuple | list) -> list[Any]:
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "header", "path") else loc)
    # pydantic names union members in the location (``input.list[str].0``): not a field
    return [p for p in parts if isinstance(p, int)
            or not (p in _TYPE_TAGS or "[" in str(p) or "(" in str(p))]


def _field(loc: tuple | list) -> str:
    out = ""
    for p in _parts(loc):
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"

"""The hot path: a well-formed ``POST /infer`` answered without FastAPI's request machinery.

At 64 one-text clients, py-spy had half of a gateway worker's samples in FastAPI and
Starlette between the middleware and the endpoint (routing, dependency solving, the exit-stack
and exception wrappers, pydantic on the body), four times the samples of the endpoint's own
work. A search box's request is small and always the same shape, so ``FastLane`` serves it
directly: one ``orjson.loads``, the checks of ``InferRequest`` by hand, then the endpoint's
very ``check`` and ``run``, and the answer ``/infer`` gives.

Anything else takes the ordinary way, with the body replayed: another path or method, a query
string (``?strategy=``), a body that is not exactly ``{"texts": [str, ...], "model": str}``.
So every error a client can get is FastAPI's, worded as before, and the fast lane cannot
accept what the schema refuses. It sits inside ``Intake``: the key, content type and body
limits are checked before it.
"""

from __future__ import annotations

from typing import Any

import orjson

from kiln.serve._embed_api import check, infer_body, json_bytes, run
from kiln.serve._gateway import Served
from kiln.serve._middleware import ApiError, error_response

_FIELDS = frozenset({"texts", "model"})
_HEADERS = [(b"content-type", b"application/json")]


class FastLane:
    """ASGI middleware; see the module docstring."""

    def __init__(self, app: Any, *, served: Served) -> None:
        self.app = app
        self.served = served
        self.hits = 0  # requests it answered (the tests check that the lane is used)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if (scope["type"] != "http" or scope["path"] != "/infer" or scope["method"] != "POST"
                or scope.get("query_string")):
            return await self.app(scope, receive, send)
        message = await receive()
        request = _infer_request(message)
        if request is None:
            return await self.app(scope, _replay(message, receive), send)
        texts, model = request
        self.hits += 1
        try:
            check(self.served, texts, model, "texts")
            body = json_bytes(infer_body(await run(self.served, "/infer", texts, model, None)))
        except ApiError as err:
            response = error_response(err.status, err.kind, err.message, err.field, err.headers)
            return await response(scope, receive, send)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*_HEADERS, (b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})


def _infer_request(message: dict) -> tuple[list[str], str] | None:
    """``(texts, model)`` when ``message`` is a whole body ``InferRequest`` accepts, as it is,
    with no coercion; otherwise None (the ordinary way decides, and words any error)."""
    if message.get("type") != "http.request" or message.get("more_body"):
        return None
    try:
        data = orjson.loads(message.get("body", b""))
    except orjson.JSONDecodeError:
        return None
    if type(data) is not dict or not data.keys() <= _FIELDS:
        return None
    texts, model = data.get("texts"), data.get("model", "default")
    if (type(texts) is not list or not texts or type(model) is not str or not model
            or not all(type(t) is str for t in texts)):
        return None
    return texts, model


def _replay(message: dict, receive: Any) -> Any:
    """``receive`` with ``message`` first: the ordinary way reads the body the lane looked at."""
    pending = [message]

    async def replay() -> dict:
        return pending.pop() if pending else await receive()

    return replay

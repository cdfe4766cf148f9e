"""The hot path: a well-formed ``POST /infer`` or ``POST /v1/embeddings`` of texts, answered
without FastAPI's request machinery.

At 64 one-text clients, py-spy had half of a gateway worker's samples in FastAPI and
Starlette between the middleware and the endpoint (routing, dependency solving, the exit-stack
and exception wrappers, pydantic on the body), four times the samples of the endpoint's own
work. A search box's request is small and always the same shape, so ``FastLane`` serves it
directly: one ``orjson.loads``, the schema's checks by hand, then the endpoint's very
``check`` and ``run``, and the answer the endpoint gives.

Anything else takes the ordinary way, with the body replayed: another path or method, a query
string (``?strategy=``), a body the lane does not take exactly as it is (a wrong type, a field
it does not know, OpenAI token ids). So every error a client can get is FastAPI's, worded as
before, and the lane cannot accept what the schema refuses. It sits inside ``Intake``: the
key, content type and body limits are checked before it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import orjson

from kiln.serve._embed_api import check, infer_body, json_bytes, run, server_timing
from kiln.serve._gateway import Outcome, Served
from kiln.serve._middleware import ApiError, error_response, internal_error
from kiln.serve._openai_api import embeddings_body

_HEADERS = [(b"content-type", b"application/json")]
# The fields the lane knows; a body with any other goes the ordinary way. Equal to the schemas'
# own fields (tests/test_gateway_fastlane.py checks it): a field added there must be read here.
INFER_FIELDS = frozenset({"texts", "model"})
EMBEDDINGS_FIELDS = frozenset({"input", "model", "encoding_format", "user"})


class Parsed(NamedTuple):
    texts: list[str]
    model: str
    answer: Callable[[Outcome], dict[str, Any]]  # the endpoint's body for the outcome


def _texts(value: Any) -> list[str] | None:
    if type(value) is not list or not value or not all(type(t) is str for t in value):
        return None
    return value


def _model(data: dict) -> str | None:
    model = data.get("model", "default")
    return model if type(model) is str and model else None


def _infer(data: dict) -> Parsed | None:
    """``InferRequest``: ``texts`` (non-empty, strings), ``model``; nothing else."""
    if not data.keys() <= INFER_FIELDS:
        return None
    texts, model = _texts(data.get("texts")), _model(data)
    return None if texts is None or model is None else Parsed(texts, model, infer_body)


def _embeddings(data: dict) -> Parsed | None:
    """``EmbeddingsRequest`` with text input: a string or non-empty strings (token ids go the
    ordinary way, which decodes them); ``encoding_format`` float or base64; ``user`` a string."""
    if not data.keys() <= EMBEDDINGS_FIELDS:
        return None
    given = data.get("input")
    texts = [given] if type(given) is str else _texts(given)
    model, encoding = _model(data), data.get("encoding_format", "float")
    if (texts is None or model is None or encoding not in ("float", "base64")
            or type(data.get("user", "")) is not str):
        return None
    return Parsed(texts, model, lambda out: embeddings_body(out, model, encoding))


# path: (how its body is read, the field its texts are named by in errors)
ROUTES: dict[str, tuple[Callable[[dict], Parsed | None], str]] = {
    "/infer": (_infer, "texts"),
    "/v1/embeddings": (_embeddings, "input"),
}


class FastLane:
    """ASGI middleware; see the module docstring."""

    def __init__(self, app: Any, *, served: Served) -> None:
        self.app = app
        self.served = served
        self.hits = 0  # requests it answered (the tests check that the lane is used)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        route = ROUTES.get(scope["path"]) if scope["type"] == "http" else None
        if route is None or scope["method"] != "POST" or scope.get("query_string"):
            return await self.app(scope, receive, send)
        message = await receive()
        parsed = _parse(message, route[0])
        if parsed is None:
            return await self.app(scope, _replay(message, receive), send)
        self.hits += 1
        try:
            check(self.served, parsed.texts, parsed.model, route[1])
            out = await run(self.served, scope["path"], parsed.texts, parsed.model, None)
            body = json_bytes(parsed.answer(out))
        except ApiError as err:
            response = error_response(err.status, err.kind, err.message, err.field, err.headers)
            return await response(scope, receive, send)
        except Exception as err:  # noqa: BLE001 - answered as FastAPI answers it elsewhere
            return await internal_error("POST", scope["path"], err)(scope, receive, send)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*_HEADERS, (b"content-length", b"%d" % len(body)),
                                (b"server-timing", server_timing(out))]})
        await send({"type": "http.response.body", "body": body})


def _parse(message: dict, read: Callable[[dict], Parsed | None]) -> Parsed | None:
    """The request in ``message`` when it is a whole body the route's schema accepts as it is,
    with no coercion; otherwise None (the ordinary way decides, and words any error)."""
    if message.get("type") != "http.request" or message.get("more_body"):
        return None
    try:
        data = orjson.loads(message.get("body", b""))
    except orjson.JSONDecodeError:
        return None
    return read(data) if type(data) is dict else None


def _replay(message: dict, receive: Any) -> Any:
    """``receive`` with ``message`` first: the ordinary way reads the body the lane looked at."""
    pending = [message]

    async def replay() -> dict:
        return pending.pop() if pending else await receive()

    return replay

"""What every request passes before an endpoint sees it: key, content type, body.

One ASGI middleware (``Intake``), in this order, so that the cheap refusals come first:

1. **API key**, from the headers alone: a request without the key is answered 401 before a
   byte of its body is read (it used to be parsed first).
2. **Content type**: JSON is read as JSON. ``curl -d`` labels its JSON body
   ``application/x-www-form-urlencoded``, and the README's examples use it, so that label and
   ``text/plain`` are read as JSON too, but not from a web page: those are the content types a
   browser may POST cross-site without a CORS preflight, so any page a user visits could make
   a key-less gateway encode for it. Browsers send ``Origin`` with every such POST, curl and
   scripts do not; with an ``Origin`` and no key set, they get 415.
3. **Body**: refused with 413 as soon as it is over the limit (declared or, chunked, counted),
   and with 408 when it has not fully arrived within ``body_timeout`` seconds (a request that
   declares 100 bytes and sends 9 was held for ever). Both close the connection.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

from fastapi.responses import JSONResponse

log = logging.getLogger("kiln.serve")

# Open without a key: probes, and the docs (which say which endpoints want one).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc",
                        "/openapi.json"})
_JSON = (b"content-type", b"application/json")
_SIMPLE = (b"", b"application/x-www-form-urlencoded", b"text/plain")


class ApiError(Exception):
    """An error answered as JSON with ``status`` (raised inside the endpoints)."""

    def __init__(self, status: int, kind: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.field = status, kind, message, field
        self.headers = headers


def error_response(status: int, kind: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    """Every error of the gateway: ``{"error": {"type", "message", "field"}}``."""
    return JSONResponse({"error": {"type": kind, "message": message, "field": field}, **extra},
                        status_code=status, headers=headers)


def internal_error(method: str, path: str, err: BaseException) -> JSONResponse:
    """A 500 for an error nothing else answered. The client learns that the gateway failed,
    not how: the text may carry paths, hosts or keys. The log has the whole error."""
    log.error("kiln serve: %s %s failed", method, path, exc_info=err)
    return error_response(500, "internal_error", "the gateway failed unexpectedly; its log "
                                                 "says why")


def unauthorized() -> JSONResponse:
    return error_response(401, "unauthorized", "missing or wrong API key: send "
                          "'Authorization: Bearer KEY'", "Authorization",
                          {"WWW-Authenticate": "Bearer"})


def key_matches(header: bytes | None, key: str) -> bool:
    if not header or not header[:7].lower() == b"bearer ":
        return False
    return secrets.compare_digest(header[7:].strip(), key.encode())


class Intake:
    """ASGI middleware; see the module docstring."""

    def __init__(self, app: Any, *, key: str | None, max_body_bytes: int,
                 body_timeout: float = 30.0) -> None:
        self.app = app
        self.key = key
        self.limit = max_body_bytes
        self.body_timeout = body_timeout

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        app = scope.get("app")
        if app is not None and getattr(app.state, "draining", False):
            send = _closing(send)
        headers = dict(scope.get("headers") or [])
        if self.key is not None and scope.get("path") not in OPEN_PATHS:
            if not key_matches(headers.get(b"authorization"), self.key):
                return await self._answer(unauthorized(), scope, receive, send,
                                          close=scope.get("method") == "POST")
        if scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if kind in _SIMPLE:
            if self.key is None and b"origin" in headers:
                return await self._answer(error_response(
                    415, "unsupported_media_type", f"content-type: {kind.decode() or '(none)'} "
                    "from a web page is refused by a gateway without an API key; send "
                    "application/json (or set a key with --api-key-file)", "content-type"),
                    scope, receive, send, close=True)
            others = [(k, v) for k, v in scope.get("headers") or [] if k != b"content-type"]
            scope = {**scope, "headers": [*others, _JSON]}
        elif kind != b"application/json" and not kind.endswith(b"+json"):
            return await self._answer(error_response(
                415, "unsupported_media_type", f"content-type: {kind.decode(errors='replace')} "
                "is not JSON; send application/json", "content-type"),
                scope, receive, send, close=True)
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._answer(self._too_large(), scope, receive, send, close=True)
        try:
            # asyncio.timeout, not wait_for: no task of its own for every request's body
            async with asyncio.timeout(self.body_timeout):
                body = await self._read(receive)
        except TimeoutError:
            return await self._answer(error_response(
                408, "request_timeout", f"body: not received within {self.body_timeout:g} s "
                "(the request declared more than it sent)", "body"),
                scope, receive, send, close=True)
        except _TooLarge:
            return await self._answer(self._too_large(), scope, receive, send, close=True)
        if body is None:  # the client went away
            return None
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read(self, receive: Any) -> bytes | None:
        parts: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.limit:
                raise _TooLarge()
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    def _too_large(self) -> JSONResponse:
        return error_response(413, "payload_too_large",
                              f"body: larger than the limit of {self.limit} bytes", "body")

    @staticmethod
    async def _answer(response: JSONResponse, scope: dict, receive: Any, send: Any,
                      close: bool = False) -> None:
        if close:
            # The rest of the body (if any) is never read: the connection cannot carry another
            # request, so say so and let the server close it.
            response.headers["connection"] = "close"
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass


def _closing(send: Any) -> Any:
    """``send`` with ``Connection: close`` on the response: the server closes the connection
    after it (a worker handing over to a fresh one)."""

    async def sending(message: dict) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return sending

"""uvicorn, set up to hold its ground: connection guard, log rate limit, background server.

What plain uvicorn left open (issue 12, item 3), and what is done here:

- A connection that never sends a request was held for ever (the keep-alive timer starts only
  after a first response): the guarded protocols (uvicorn's httptools one, as ``uvicorn
  --http auto`` picks it where httptools is installed, or its h11 one) close a connection whose
  request line and headers have not arrived ``timeout_header`` seconds after it opened (or after its last
  response). The body has its own timeout in ``kiln.serve._middleware``.
- ~20,000 idle connections took every file descriptor and ``/healthz`` with them: at
  ``max_connections`` the oldest *idle* connections are closed to make room for a new one
  (a connection with a request in flight is never closed), so a probe still gets in; when all
  are busy the newcomer is closed. The soft limit on open files is raised to the hard one, and
  the default cap and the accept burst (``backlog``) together stay below it.
- 512k "Too many open files" lines in a minute: ``RateLimit`` lets a few of each message
  through per window and then one line saying how many it held back.

``BackgroundServer`` runs the same server in a thread, for notebooks, tests and benchmarks.
``kiln.serve._supervisor.SupervisedServer`` runs ``kiln serve`` (its supervisor and worker
processes) in a child process instead: the gateway to start from a notebook when it must
re-attach after a head restart, which a gateway in the notebook's own process cannot (that
process is a Ray driver, and Ray ends or aborts a driver whose head restarted as a new
cluster).
"""

from __future__ import annotations

import logging
import resource
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

try:  # uvicorn's faster parser, which `--http auto` takes: a dependency of kiln
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - a platform without its wheel
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

from kiln._poll import wait_until
from kiln.errors import GatewayError
from kiln.serve._options import HTTP_PARSERS

log = logging.getLogger("kiln.serve")
_FD_RESERVE = 128  # descriptors kept for Ray, the model files, logs and the listening socket


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard one; returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def connection_budget(backlog: int = 2048) -> tuple[int, int]:
    """(max_connections, accept burst) that fit the open-file limit.

    asyncio accepts up to ``backlog`` connections in one go before the protocol sees any of
    them, and a few such bursts can land before the first one's protocols run; the cap leaves
    room for four: with less, a flood of 2,000 connections on 1,024 descriptors still ran out,
    and each "Too many open files" paused accepting for a second.
    """
    room = raise_fd_limit() - _FD_RESERVE
    burst = max(16, min(backlog, room // 16))
    return max(64, min(10_000, room - 4 * burst)), burst


class Guard:
    """Mixed into a uvicorn HTTP protocol: a header timeout and a connection cap (module
    docstring). Settings are class attributes: ``guarded(...)`` makes a subclass with them.

    Both uvicorn protocols keep ``connections``, ``cycle``, ``loop`` and ``transport`` and call
    ``on_response_complete``; that is all the guard uses.
    """

    timeout_header = 10.0
    max_connections = 0  # 0: no cap
    closed = {"header_timeout": 0, "idle_evicted": 0, "refused": 0}

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._opened = self.loop.time()
        self._header_timer = self.loop.call_later(self.timeout_header, self._header_expired)
        if self.max_connections and len(self.connections) > self.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._header_timer.cancel()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._header_timer.cancel()
        if not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self.timeout_header, self._header_expired)

    def _idle(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _header_expired(self) -> None:
        if self._idle() and not self.transport.is_closing():
            type(self).closed["header_timeout"] += 1
            self.transport.close()

    def _make_room(self) -> None:
        # Closed connections stay in the set until the loop runs their connection_lost: count
        # only the open ones, or a burst of arrivals would refuse itself.
        live = [c for c in self.connections if not c.transport.is_closing()]
        excess = len(live) - self.max_connections
        if excess <= 0:
            return
        idle = sorted((c for c in live if c is not self and isinstance(c, Guard)
                       and c._idle()), key=lambda c: c._opened)
        for victim in idle[:excess]:
            type(self).closed["idle_evicted"] += 1
            victim.transport.close()
        if len(idle) < excess:  # every other connection is busy: this one waits its turn
            type(self).closed["refused"] += 1
            self.transport.close()


def guarded(timeout_header: float, max_connections: int, http: str = "auto") -> type[Guard]:
    """The guarded protocol class for ``http`` (``auto``: httptools where installed, as uvicorn
    picks; ``ServeOptions.check`` has refused a bad name before anything connects)."""
    if http not in HTTP_PARSERS:
        raise GatewayError(f"--http {http!r}: use one of {', '.join(HTTP_PARSERS)}")
    if http == "httptools" and HttpToolsProtocol is None:
        raise GatewayError("--http httptools: httptools is not installed here")
    fast = HttpToolsProtocol is not None and http != "h11"
    base = HttpToolsProtocol if fast else H11Protocol
    return type(f"Guarded{base.__name__}", (Guard, base),
                {"timeout_header": timeout_header, "max_connections": max_connections,
                 "closed": {"header_timeout": 0, "idle_evicted": 0, "refused": 0}})


class RateLimit(logging.Filter):
    """At most ``burst`` records of one message (logger + format) per ``window_s``; then one
    line saying how many were held back."""

    def __init__(self, burst: int = 5, window_s: float = 10.0) -> None:
        super().__init__()
        self.burst, self.window_s = burst, window_s
        self._seen: dict[tuple[str, str], list[float]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg)[:200])
        now = time.monotonic()
        with self._lock:
            entry = self._seen.get(key)
            if entry is None or now - entry[0] >= self.window_s:
                held = int(entry[2]) if entry else 0
                if len(self._seen) > 1000:  # bounded: forget old messages
                    self._seen.clear()
                self._seen[key] = [now, 1, 0]
                if held:
                    record.msg = f"{record.msg} [and {held} more like it in {self.window_s:g} s]"
                return True
            entry[1] += 1
            if entry[1] <= self.burst:
                return True
            entry[2] += 1
            return False


def limit_logs(burst: int = 5, window_s: float = 10.0) -> RateLimit:
    """Put one ``RateLimit`` on every handler the gateway's messages go through."""
    limit = RateLimit(burst, window_s)
    root = logging.getLogger()
    if not root.handlers:  # asyncio's accept errors would reach Python's last-resort handler
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(name)s: %(message)s"))
        root.addHandler(handler)
    for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access", "asyncio", "kiln"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RateLimit) for f in handler.filters):
                handler.addFilter(limit)
    return limit


def uvicorn_config(app: Any, *, host: str = "127.0.0.1", port: int = 8000,
                   log_level: str = "info", timeout_header: float = 10.0,
                   max_connections: int | None = None, http: str = "auto",
                   **uvicorn_options: Any) -> Any:
    """A ``uvicorn.Config`` with the guarded protocol; ``uvicorn_options`` as uvicorn names them
    (``timeout_keep_alive``, ``limit_concurrency``, ``backlog``, ...)."""
    import uvicorn

    cap, burst = connection_budget(uvicorn_options.pop("backlog", 2048))
    protocol = guarded(timeout_header, cap if max_connections is None else max_connections, http)
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=protocol,
                          lifespan="on", backlog=burst, **uvicorn_options)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_to_serve(ready: Callable[[], bool], timeout: float, what: str, *,
                  stop: Callable[[], None], interval: float) -> None:
    """``wait_until`` for a gateway starting: one that does not serve in time is stopped, and
    ``GatewayError`` says how long it was given."""
    try:
        wait_until(ready, timeout, what, interval=interval)
    except TimeoutError as err:
        stop()
        raise GatewayError(str(err)) from None


class BackgroundServer:
    """uvicorn serving ``app`` in a daemon thread; ``url``, ``stop()``, usable as a context.

    ``options`` go to ``uvicorn_config`` (``timeout_header``, ``max_connections``,
    ``timeout_keep_alive``, ...).
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int | None = None,
                 log_level: str = "warning", start_timeout: float = 120.0, **options: Any) -> None:
        import uvicorn

        self.app = app
        self.host = host
        self.port = port or free_port(host)
        options.setdefault("timeout_graceful_shutdown", 5)
        config = uvicorn_config(app, host=host, port=self.port, log_level=log_level, **options)
        self.protocol = config.http
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="kiln-gateway", daemon=True)
        self.thread.start()

        def started() -> bool:
            if not self.server.started and not self.thread.is_alive():
                raise GatewayError(f"the gateway on {self.host}:{self.port} failed to start "
                                   "(see the log above)")
            return self.server.started

        wait_to_serve(started, start_timeout, f"the gateway on {self.host}:{self.port} to start",
                      stop=self.stop, interval=0.02)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve_in_background(cluster: Any = None, **options: Any) -> BackgroundServer:
    """Create the gateway app (``create_app`` options) and serve it on a free local port."""
    from kiln.serve._app import create_app

    host = options.pop("host", "127.0.0.1")
    port = options.pop("port", None)
    app = create_app(cluster, **options) if cluster is not None else create_app(**options)
    return BackgroundServer(app, host=host, port=port)

"""Run the gateway in a background thread: for notebooks, tests and benchmarks.

``kiln serve`` blocks in uvicorn; a notebook wants the server beside it, on a free port of
127.0.0.1, and stopped when done.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from kiln.errors import GatewayError


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class BackgroundServer:
    """uvicorn serving ``app`` in a daemon thread; ``url``, ``stop()``, usable as a context."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int | None = None,
                 log_level: str = "warning", start_timeout: float = 120.0) -> None:
        import uvicorn

        self.app = app
        self.host = host
        self.port = port or free_port(host)
        config = uvicorn.Config(app, host=host, port=self.port, log_level=log_level,
                                lifespan="on", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="kiln-gateway", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + start_timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise GatewayError(f"the gateway on {self.host}:{self.port} failed to start "
                                   "(see the log above)")
            if time.monotonic() > deadline:
                self.stop()
                raise GatewayError(f"the gateway on {self.host}:{self.port} did not start "
                                   f"within {start_timeout} s")
            time.sleep(0.02)

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
    from kiln.serve.app import create_app

    host = options.pop("host", "127.0.0.1")
    port = options.pop("port", None)
    app = create_app(cluster, **options) if cluster is not None else create_app(**options)
    return BackgroundServer(app, host=host, port=port)

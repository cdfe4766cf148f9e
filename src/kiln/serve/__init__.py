"""The HTTP gateway: FastAPI routes embedding requests to the cluster's agents.

    run(...)                 serve until interrupted, as ``kiln serve`` does (a supervisor
                             holding the port, worker processes attached to the cluster)
    SupervisedServer(...)    the same from a notebook or a test, in a child process; it
                             attaches again after a head restart
    serve_in_background(...) one worker in a thread of this process (``BackgroundServer``)
    create_app(...)          the ASGI app, to mount in another server
    ServeOptions             every setting of ``kiln serve``, validated

Importing this package imports neither FastAPI nor uvicorn: each name loads on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "BackgroundServer": "kiln.serve._server",
    "serve_in_background": "kiln.serve._server",
    "SupervisedServer": "kiln.serve._supervisor",
    "ServeOptions": "kiln.serve._options",
    "create_app": "kiln.serve._app",
}

__all__ = ["BackgroundServer", "ServeOptions", "SupervisedServer", "create_app", "run",
           "serve_in_background"]


def run(host: str = "127.0.0.1", port: int = 8000, strategy: str = "round_robin",
        api_key_file: str | None = None, address: str | None = None, **options: Any) -> None:
    """Serve the gateway on ``host:port`` until interrupted, attached to the cluster at
    ``address`` (none: the embedded default). ``options``: the fields of ``ServeOptions``
    (``workers``, ``fallback``, ``timeout``, ...)."""
    from kiln.serve._options import ServeOptions
    from kiln.serve._supervisor import serve

    serve(ServeOptions(host=host, port=port, strategy=strategy, api_key_file=api_key_file,
                       address=address, **options))


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kiln.serve' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

"""The HTTP gateway (seed 002): FastAPI routes embedding requests to the cluster's agents.

``run(...)`` serves the gateway as ``kiln serve`` does (a supervisor holding the port and
worker processes that attach to the cluster: ``kiln.serve.supervisor``); ``create_app(...)``
(in ``kiln.serve.app``) builds the ASGI app for embedding in another server or a test, and
``kiln.serve.server.BackgroundServer`` serves one in a thread. Importing this package imports
neither FastAPI nor uvicorn: ``kiln.embed`` uses its routing strategies.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "run"]


def create_app(*args: Any, **kwargs: Any) -> Any:
    """See ``kiln.serve.app.create_app``."""
    from kiln.serve.app import create_app as _create_app

    return _create_app(*args, **kwargs)


def run(host: str = "127.0.0.1", port: int = 8000, strategy: str = "round_robin",
        api_key_file: str | None = None, address: str | None = None, **options: Any) -> None:
    """Serve the gateway on ``host:port`` until interrupted, attached to the cluster at
    ``address`` (none: the embedded default). ``options``: the fields of
    ``kiln.serve.options.ServeOptions`` (``workers``, ``fallback``, ``timeout``, ...)."""
    from kiln.serve.options import ServeOptions
    from kiln.serve.supervisor import serve

    serve(ServeOptions(host=host, port=port, strategy=strategy, api_key_file=api_key_file,
                       address=address, **options))

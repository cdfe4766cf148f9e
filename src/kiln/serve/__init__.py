"""The HTTP gateway (seed 002): FastAPI routes embedding requests to the cluster's agents.

``run(...)`` attaches to the cluster and serves; ``create_app(...)`` (in ``kiln.serve.app``)
builds the ASGI app for embedding in another server or a test. Importing this package imports
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
        api_key_file: str | None = None, address: str | None = None, *,
        log_level: str = "info", **options: Any) -> None:
    """Attach to the cluster (``kiln.connect(address)``; no address: the embedded default) and
    serve the gateway with uvicorn on ``host:port`` until interrupted.

    ``options`` go to ``create_app`` (``timeout``, ``retries``, ``fallback``, ``limits``, ...).
    """
    import uvicorn

    import kiln
    from kiln.serve.app import create_app as _create_app

    cluster = kiln.connect(address)
    app = _create_app(cluster, strategy=strategy, api_key_file=api_key_file, **options)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level)
    finally:
        kiln.shutdown(keep_agents=True)

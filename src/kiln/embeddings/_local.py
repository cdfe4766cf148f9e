"""``LocalEncoder``: the agent's encoding path, in this process (no cluster).

The gateway's local fallback and notebooks without a cluster use it; it is the same code an
agent runs (encoder, batcher, cache), so a vector is the same wherever it was computed.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from typing import Any

from kiln._protocol import AgentContext, JobContext


class LocalEncoder:
    """Encode texts in this process: ``LocalEncoder(["default"]).encode(["a", "b"])``."""

    def __init__(self, models: Sequence[str] = ("default",), device: str = "cpu",
                 name: str = "local") -> None:
        from kiln.embeddings import _worker as worker

        self._worker = worker
        self.ctx = AgentContext(name, name, device)
        self.state = worker.State(self.ctx)
        self._jobs = itertools.count()
        for model in models:
            self.state.encoder(model)   # loaded now, not on the first request

    def encode(self, texts: list[str], model: str = "default",
               cancel: threading.Event | None = None) -> dict[str, Any]:
        """Embeddings (float32, input order) and counts, as an agent answers them.

        Setting ``cancel`` (from another thread) drops the request before its pass runs.
        """
        job = JobContext(self.ctx, f"local-{next(self._jobs)}", cancel or threading.Event())
        return self._worker.encode(self.state, {"texts": list(texts), "model": model}, job)

    def info(self) -> dict[str, Any]:
        return self._worker.info(self.state)


__all__ = ["LocalEncoder"]

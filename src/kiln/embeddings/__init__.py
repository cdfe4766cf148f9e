"""Text embeddings on the cluster's agents; the function is ``kiln.embed(texts, model=...)``.

``models`` resolves names offline and loads them, ``encoder`` runs a loaded model (with
``tokens`` and ``graphs``), ``cache`` and ``batcher`` live in each agent with ``worker`` (the
agent side), and ``api`` routes a call to agents with failover.

The package is named ``embeddings``, not ``embed``, so that importing one of its modules never
rebinds ``kiln.embed``: that name is the function, always.
"""

from __future__ import annotations

from kiln.embeddings._api import check_texts, embed, is_retryable
from kiln.embeddings._local import LocalEncoder
from kiln.embeddings._models import resolve, set_offline

__all__ = ["LocalEncoder", "check_texts", "embed", "is_retryable", "resolve", "set_offline"]

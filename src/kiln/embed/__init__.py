"""Text embeddings on the cluster's agents: ``kiln.embed(texts, model="default")``.

``models`` resolves names offline and loads them, ``encoder`` runs a loaded model (with
``tokens`` and ``graphs``), ``cache`` and ``batcher`` live in each agent with ``worker`` (the
agent side), and ``api`` routes a call to agents with failover.

The package shares its name with the function ``kiln.embed``: once ``kiln.embed.<sub>`` is
imported, Python binds the attribute ``kiln.embed`` to this package, so the package is made
callable and ``kiln.embed([...])`` means the function whichever of the two the name holds.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from kiln.embed.api import check_texts, embed, is_retryable
from kiln.embed.local import LocalEncoder
from kiln.embed.models import resolve, set_offline

__all__ = ["LocalEncoder", "check_texts", "embed", "is_retryable", "resolve", "set_offline"]


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return embed(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

"""Full garbage collections, which pause a server for a tenth of a second or more.

A loaded agent holds ~500k objects the collector tracks (torch, transformers, the model's
modules), and a gateway worker with its fallback model about as many; a full collection walks
them all: 291 ms in an agent on the 2-core VM. Python runs one after enough allocations, at a
moment no request chooses, and meanwhile the event loop or the agent's threads wait. What is
alive once a server has loaded its models lives as long as the process, so, as vLLM does after
capturing its CUDA graphs, it is collected once and moved to the permanent generation
(``gc.freeze``): later collections walk only what came after (0.0 ms for the same agent).
"""

from __future__ import annotations

import gc
import time


def settle() -> float:
    """Collect, then freeze what is left out of later collections; the seconds it took."""
    began = time.perf_counter()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - began

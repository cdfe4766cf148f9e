"""kiln: the cluster is the API.

One call sends plain data to a named node of a Ray cluster; the node's agent does the work on
its GPU (NUTS chains, text embeddings, a function written in a notebook) and plain data comes
back. ``kiln.connect()`` with no address runs the same code on a local, embedded Ray.
"""

from __future__ import annotations

from importlib import import_module
from importlib import metadata as _metadata
from typing import TYPE_CHECKING, Any

from kiln import errors

if TYPE_CHECKING:  # the names __getattr__ imports on first use, typed for type checkers
    from kiln._dispatch import DispatchResult, combine, dispatch
    from kiln.bayes._sample import sample
    from kiln.cluster import Cluster, connect, current, shutdown
    from kiln.code._call import call, map, remote
    from kiln.code._introspect import inspect, remote_module
    from kiln.code._ipython import load_ipython_extension
    from kiln.embeddings._api import embed

try:  # the one place the version is written is pyproject.toml
    __version__ = _metadata.version("kiln")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

# Everything loads on first use, so `import kiln` stays fast and imports no Ray, jax or torch:
# a model is built, validated and compiled (on an agent, or in a bench) without the engine.
_LAZY = {
    "Cluster": ("kiln.cluster", "Cluster"),
    "connect": ("kiln.cluster", "connect"),
    "current": ("kiln.cluster", "current"),
    "shutdown": ("kiln.cluster", "shutdown"),
    "dispatch": ("kiln._dispatch", "dispatch"),
    "combine": ("kiln._dispatch", "combine"),
    "DispatchResult": ("kiln._dispatch", "DispatchResult"),
    "sample": ("kiln.bayes._sample", "sample"),
    "embed": ("kiln.embeddings._api", "embed"),
    "call": ("kiln.code._call", "call"),
    "map": ("kiln.code._call", "map"),
    "remote": ("kiln.code._call", "remote"),
    "inspect": ("kiln.code._introspect", "inspect"),
    "remote_module": ("kiln.code._introspect", "remote_module"),
    "load_ipython_extension": ("kiln.code._ipython", "load_ipython_extension"),
}

__all__ = [
    "Cluster", "DispatchResult", "__version__", "call", "combine", "connect", "current",
    "dispatch", "embed", "errors", "inspect", "load_ipython_extension", "map", "remote",
    "remote_module", "sample", "shutdown",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kiln' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

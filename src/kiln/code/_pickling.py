"""Shipping code by value (seed 003: code written in one place runs on every node).

Installed packages exist on every node (the fingerprint check makes sure of that), so they
travel *by reference*: a pickle says ``numpy.tanh`` and the node imports it. Code that lives
only next to the driver (``__main__``, a notebook cell, a ``helpers.py`` beside the notebook)
travels *by value*: cloudpickle writes the function's bytecode, globals and closure into the
pickle, and the node rebuilds it without importing anything. Which modules are local is decided
automatically (:func:`is_local_module`), and they are registered with
``cloudpickle.register_pickle_by_value`` before each pickling.

A pickled function is a :class:`CodeBlob` named by the sha256 of its bytes. The :class:`Ledger`
remembers which blobs each agent holds, so an unchanged function is sent once per agent and an
edited one (its bytes change) is sent again; every shipment is counted (:func:`shipments`).

Arguments and results use the standalone ``cloudpickle`` package on both sides: the classes it
rebuilds by value are tracked by id, so an instance of a notebook class that goes out and comes
back is an instance of the *same* class on the driver, and ``except MyError`` catches a remote
``MyError``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import pickle
import sys
import sysconfig
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import numpy as np

from kiln import _boundary as boundary
from kiln.errors import BoundaryError

log = logging.getLogger("kiln")

# kiln itself is installed on every node and checked by the fingerprint: always by reference.
_ALWAYS_BY_REFERENCE = frozenset({"kiln", "__main__", "__mp_main__", "builtins"})

_decisions: dict[str, bool] = {}
_registered: set[str] = set()
_lock = threading.Lock()


@dataclass(frozen=True)
class CodeBlob:
    """A pickled callable, named by the sha256 of its bytes."""

    digest: str
    data: bytes
    name: str

    def __len__(self) -> int:
        return len(self.data)


@dataclass
class ShipStats:
    """What has been shipped to agents since the process started (or since ``reset``)."""

    count: int = 0
    bytes: int = 0
    by_agent: dict[str, int] = field(default_factory=dict)
    by_name: dict[str, int] = field(default_factory=dict)


# --- which modules are local -------------------------------------------------------------------


def _installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots |= {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    return tuple(os.path.realpath(r) + os.sep for r in roots if r)


_ROOTS = _installed_roots()
_DISTRIBUTIONS: set[str] | None = None


def _distribution_top_levels() -> set[str]:
    # Top-level import names of installed distributions, editable installs included: those
    # are installed on every node, wherever their files live on the driver.
    global _DISTRIBUTIONS
    if _DISTRIBUTIONS is None:
        try:
            _DISTRIBUTIONS = set(importlib.metadata.packages_distributions())
        except Exception as err:  # noqa: BLE001 - broken metadata of any one distribution must
            # not stop code shipping: modules are then judged by their path alone
            log.warning("cannot read the installed distributions (%r): a module is shipped by "
                        "value unless its file is in site-packages or the standard library", err)
            _DISTRIBUTIONS = set()
    return _DISTRIBUTIONS


def is_local_module(name: str, module: Any = None) -> bool:
    """True when module ``name`` is driver-local code that must ship by value.

    Local means: a Python source file that is not part of the standard library, not inside
    an environment's site-packages, and not part of an installed distribution.
    """
    top = name.partition(".")[0]
    if top in _ALWAYS_BY_REFERENCE or top in sys.builtin_module_names:
        return False
    module = module if module is not None else sys.modules.get(name)
    path = getattr(module, "__file__", None)
    if not path or not path.endswith(".py"):
        # builtins, namespace packages, C extensions: cannot (or need not) ship by value
        return False
    if os.path.realpath(path).startswith(_ROOTS):
        return False
    return top not in _distribution_top_levels()


def register_local_modules() -> list[str]:
    """Register every local top-level module in ``sys.modules`` for pickling by value.

    Decisions are cached per module name, so a call costs a scan of new names only.
    Returns the names registered by this call.
    """
    new: list[str] = []
    with _lock:
        for name, module in list(sys.modules.items()):
            if name in _decisions or module is None:
                continue
            local = is_local_module(name, module)
            _decisions[name] = local
            top = name.partition(".")[0]
            if local and top not in _registered and top in sys.modules:
                # registering the top-level package covers its submodules too
                cloudpickle.register_pickle_by_value(sys.modules[top])
                _registered.add(top)
                new.append(top)
    return new


def registered_modules() -> list[str]:
    """Top-level modules currently shipped by value."""
    return sorted(_registered)


# --- code ----------------------------------------------------------------------------------------


def pack_code(fn: Any) -> CodeBlob:
    """Pickle ``fn`` (local code by value) into a :class:`CodeBlob`."""
    if not callable(fn):
        raise BoundaryError("fn", f"{type(fn).__qualname__} is not callable")
    register_local_modules()
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    try:
        data = cloudpickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as err:  # noqa: BLE001 - pickling runs objects' own __reduce__: any error
        # becomes BoundaryError naming what cannot be pickled
        raise BoundaryError(f"fn ({name})", f"cannot be pickled: {_why(fn, 'fn', err)}") from err
    return CodeBlob(hashlib.sha256(data).hexdigest(), data, name)


def load_code(data: bytes) -> Callable[..., Any]:
    """Rebuild a callable from a blob's bytes (on the node)."""
    return cloudpickle.loads(data)


# --- arguments and results -----------------------------------------------------------------------

_PLAIN_SCALARS = (str, bytes, bool, int, float, complex, type(None))


def is_plain(obj: object) -> bool:
    """True for data every node can unpickle without kiln's help: numbers, strings, numpy
    arrays of numbers, and dicts/lists/tuples of those.

    Plain data travels through the engine as it is (numpy buffers without a copy); anything
    else (instances of notebook classes, functions) is pickled here with cloudpickle.
    """
    if isinstance(obj, _PLAIN_SCALARS):
        return True
    if isinstance(obj, np.ndarray):
        return obj.dtype != object
    if isinstance(obj, np.generic):
        return True
    if type(obj) in (list, tuple):
        return all(is_plain(v) for v in obj)
    if type(obj) is dict:
        return all(isinstance(k, _PLAIN_SCALARS) and is_plain(v) for k, v in obj.items())
    return False


def pack(value: Any, root: str) -> dict:
    """Make ``value`` ready to cross: the wire boundary first, then plain or pickled.

    Raises :class:`BoundaryError` naming the path of what cannot cross; nothing is sent then.
    """
    value = boundary.to_wire(value, root=root)
    if is_plain(value):
        return {"plain": value}
    try:
        return {"pickled": cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)}
    except Exception as err:  # noqa: BLE001 - as in pack_code: BoundaryError, naming the path
        path, reason = _locate_unpicklable(value, root)
        raise BoundaryError(path, reason) from err


def unpack(packed: dict) -> Any:
    """Inverse of :func:`pack`."""
    if "pickled" in packed:
        return cloudpickle.loads(packed["pickled"])
    return packed["plain"]


def pack_call(args: tuple, kwargs: dict) -> dict:
    """Pack one call's arguments (paths ``args[i]``, ``kwargs['k']``)."""
    register_local_modules()
    return {"args": pack(tuple(args), "args"), "kwargs": pack(dict(kwargs), "kwargs")}


def pack_item(item: Any, index: int, star: bool) -> dict:
    """Pack one item of a map (path ``items[i]``); ``star`` spreads it as positional args."""
    packed = pack(item, f"items[{index}]")
    return {"args": packed} if star else {"item": packed}


def unpack_call(packed: dict) -> tuple[tuple, dict]:
    """Inverse of :func:`pack_call` and :func:`pack_item`: ``(args, kwargs)``."""
    if "item" in packed:
        return (unpack(packed["item"]),), {}
    kwargs = unpack(packed["kwargs"]) if "kwargs" in packed else {}
    return tuple(unpack(packed["args"])), dict(kwargs)


def _locate_unpicklable(value: Any, path: str) -> tuple[str, str]:
    """Walk containers and object attributes to the innermost part that does not pickle."""
    children: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        children = [(f"{path}[{k!r}]", v) for k, v in value.items()]
    elif isinstance(value, (list, tuple, set, frozenset)):
        children = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        children = [(f"{path}.{k}", v) for k, v in vars(value).items()]
    for child_path, child in children:
        try:
            cloudpickle.dumps(child)
        except Exception:  # noqa: BLE001 - looking for the failing part: the recursion reports it
            return _locate_unpicklable(child, child_path)
    try:
        cloudpickle.dumps(value)
    except Exception as err:  # noqa: BLE001 - reported in the reason returned
        return path, f"{type(value).__module__}.{type(value).__qualname__} cannot be pickled ({err})"
    return path, "cannot be pickled"


def _why(fn: Any, path: str, err: Exception) -> str:
    # For a function, name the global or closure variable that failed.
    code = getattr(fn, "__code__", None)
    if code is not None:
        names = dict(zip(code.co_freevars, [c.cell_contents for c in fn.__closure__ or ()],
                         strict=False))
        names.update({n: fn.__globals__[n] for n in code.co_names if n in fn.__globals__})
        for name, value in names.items():
            try:
                cloudpickle.dumps(value)
            except Exception:  # noqa: BLE001 - looking for the failing name: reported below
                where, reason = _locate_unpicklable(value, name)
                return f"it refers to {where}: {reason}"
    return str(err)


# --- which agent holds which code ------------------------------------------------------------


class Ledger:
    """The driver's record of the blobs each agent holds, and the shipment counter.

    Agents are keyed by (Ray node id, agent name): an agent of the same name on a new cluster
    is a new agent. The record can be stale (an agent restarted); the worker then answers
    ``missing`` and the driver ships again.
    """

    def __init__(self) -> None:
        self._held: dict[tuple[str, str], set[str]] = {}
        self._stats = ShipStats()
        self._lock = threading.Lock()

    @staticmethod
    def key(handle: Any) -> tuple[str, str]:
        return (str(getattr(handle, "node_id", "")), handle.name)

    def holds(self, handle: Any, digest: str) -> bool:
        with self._lock:
            return digest in self._held.get(self.key(handle), ())

    def record(self, handle: Any, blob: CodeBlob) -> None:
        """Count a shipment of ``blob`` to ``handle``'s agent and remember it holds it."""
        with self._lock:
            self._held.setdefault(self.key(handle), set()).add(blob.digest)
            s = self._stats
            s.count += 1
            s.bytes += len(blob)
            s.by_agent[handle.name] = s.by_agent.get(handle.name, 0) + 1
            s.by_name[blob.name] = s.by_name.get(blob.name, 0) + 1

    def forget(self, handle: Any, digest: str | None = None) -> None:
        with self._lock:
            if digest is None:
                self._held.pop(self.key(handle), None)
            else:
                self._held.get(self.key(handle), set()).discard(digest)

    def stats(self) -> ShipStats:
        with self._lock:
            s = self._stats
            return ShipStats(s.count, s.bytes, dict(s.by_agent), dict(s.by_name))

    def reset(self) -> None:
        with self._lock:
            self._held.clear()
            self._stats = ShipStats()


ledger = Ledger()


def shipments() -> ShipStats:
    """Counts of code blobs shipped to agents: total, bytes, per agent and per function name."""
    return ledger.stats()

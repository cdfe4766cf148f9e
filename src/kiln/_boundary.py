"""What may cross the wire between the driver and an agent (seed 000's fix 5).

A device array is a handle to memory on one machine's accelerator; sent to another machine it
points at nothing. So everything that crosses is made plain first: jax, torch and cupy arrays
become host numpy arrays, containers are walked, and anything that cannot cross (locks, open
files, sockets, generators, device handles) is refused *before* anything is sent, naming its
path inside the arguments, e.g. ``args[1]['mu']``.
"""

from __future__ import annotations

import io
import socket
import sys
import threading
import types
from typing import Any

import numpy as np

from kiln.errors import BoundaryError

_PLAIN = (str, bytes, bool, int, float, complex, type(None), np.generic)

# Types that hold process-local resources: sending them would give the receiver a dead handle.
_REFUSED: tuple[tuple[type, str], ...] = (
    (type(threading.Lock()), "a lock is process-local; create it on the node instead"),
    (type(threading.RLock()), "a lock is process-local; create it on the node instead"),
    (threading.Condition, "a condition is process-local"),
    (threading.Event, "an event is process-local"),
    (threading.Thread, "a thread cannot move between processes"),
    (io.IOBase, "an open file is local to this process; send its contents or a path the node can read"),
    (socket.socket, "a socket is local to this process"),
    (types.GeneratorType, "a generator cannot be sent; send list(...) of it"),
    (types.AsyncGeneratorType, "an async generator cannot be sent"),
    (types.CoroutineType, "a coroutine cannot be sent; await it first"),
    (types.FrameType, "a stack frame cannot be sent"),
)


def to_wire(obj: Any, root: str = "args") -> Any:
    """Return ``obj`` made plain for the wire, or raise ``BoundaryError`` naming the bad path.

    Device arrays are copied to host numpy; dicts, lists, tuples and sets are walked;
    other objects (dataclasses, user classes) pass as they are and are pickled by value.
    """
    return _convert(obj, root, set())


def check(obj: Any, root: str = "args") -> None:
    """Raise ``BoundaryError`` if ``obj`` cannot cross; convert nothing."""
    to_wire(obj, root)


def _convert(obj: Any, path: str, seen: set[int]) -> Any:
    if isinstance(obj, _PLAIN):
        return obj
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            return np.array([_convert(v, f"{path}[{i}]", seen) for i, v in enumerate(obj.ravel())],
                            dtype=object).reshape(obj.shape)
        return obj
    host = _device_array_to_host(obj, path)
    if host is not None:
        return host
    for kind, reason in _REFUSED:
        if isinstance(obj, kind):
            raise BoundaryError(path, f"{type(obj).__module__}.{type(obj).__qualname__}: {reason}")
    if id(obj) in seen:
        raise BoundaryError(path, "a container that contains itself cannot be sent")
    if isinstance(obj, dict):
        seen.add(id(obj))
        out = {k: _convert(v, f"{path}[{k!r}]", seen) for k, v in obj.items()}
        seen.discard(id(obj))
        return out
    if isinstance(obj, (list, tuple, set, frozenset)):
        seen.add(id(obj))
        items = [_convert(v, f"{path}[{i}]", seen) for i, v in enumerate(obj)]
        seen.discard(id(obj))
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):
            return type(obj)(*items)
        return type(obj)(items)
    return obj


def _device_array_to_host(obj: Any, path: str) -> np.ndarray | None:
    """Host copy of a jax / torch / cupy array, or None if ``obj`` is none of them.

    Only modules already imported are consulted: checking must not import a framework.
    """
    module = type(obj).__module__ or ""
    if "jax" in sys.modules and module.startswith(("jax", "jaxlib")):
        import jax

        if isinstance(obj, jax.Array):
            try:
                return np.asarray(jax.device_get(obj))
            except Exception as err:  # noqa: BLE001 - a deleted or donated buffer, a tracer:
                # jax raises several types; BoundaryError carries the text
                raise BoundaryError(path, f"jax array could not be copied to the host: {err}") from err
    if "torch" in sys.modules and module.startswith("torch"):
        import torch

        if isinstance(obj, torch.Tensor):
            try:
                return obj.detach().cpu().numpy()
            except Exception as err:  # noqa: BLE001 - as for jax, with torch's several types
                raise BoundaryError(path, f"torch tensor could not be copied to the host: {err}") from err
        if isinstance(obj, (torch.cuda.Stream, torch.cuda.Event)):
            raise BoundaryError(path, "a CUDA stream or event is local to this process's GPU context")
    if "cupy" in sys.modules and module.startswith("cupy"):
        import cupy

        if isinstance(obj, cupy.ndarray):
            return cupy.asnumpy(obj)
        raise BoundaryError(path, f"{module}.{type(obj).__qualname__} is a GPU handle; send host data")
    return None

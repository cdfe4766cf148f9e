"""The agent side of code shipping: hold shipped code, run calls, answer introspection.

Ops (routed by the agent as ``invoke("code", op, payload)``, see docs/internals.md):

- ``install {"blobs": {digest: bytes}, "name": str}`` -> ``{"installed": [digest, ...]}``,
  or ``CodeError`` when the node cannot load it (it needs a module the node lacks)
- ``have {}`` -> ``{"digests": [...]}``: the code this agent holds (the driver's ledger can be stale)
- ``run {"code": digest, "name": str, "blob"?: bytes, "calls": [packed call, ...]}``
  -> ``{"results": [...]}``,
  or ``{"missing": digest}`` when the agent lacks the code (restarted: the driver ships it again),
  or ``{"error": {...}, "index": i, "results": [...before i]}`` when the function raised.
- ``inspect {"name": dotted | None}`` -> a description of a name, or of the node.
- ``modules {}`` -> top-level module names importable on the node.

A user function's exception is returned as data, pickled with the standalone cloudpickle that
shipped the code, so the driver rebuilds the *same* class (a notebook-defined exception too).
"""

from __future__ import annotations

import logging
import pickle
import threading
import traceback
from collections.abc import Callable
from typing import Any

import cloudpickle

from kiln import errors
from kiln._caching import Cache
from kiln._protocol import AgentContext, Context, Payload, Reply
from kiln.code import _context as context
from kiln.code import _introspect as introspect
from kiln.code import _pickling as pickling

log = logging.getLogger("kiln")

OPS = ("install", "have", "run", "inspect", "modules")  # the jobs an agent may run
# Shipped code checks no cancel flag: the agent raises CancelledError in its thread instead.
HARD_CANCEL = True

# Shipped functions kept per agent; an old entry evicted is shipped again on demand.
_MAX_CODE = 512


class State:
    """Per-agent: shipped code by digest (an LRU) and counters."""

    def __init__(self, ctx: AgentContext) -> None:
        self.code: Cache[str, Callable[..., Any]] = Cache(_MAX_CODE)
        self.lock = threading.Lock()  # the counters'
        self.installs = 0
        self.calls = 0
        self.errors = 0

    def get(self, digest: str) -> Callable[..., Any] | None:
        return self.code.get(digest)

    def put(self, digest: str, data: bytes) -> Callable[..., Any]:
        fn = pickling.load_code(data)
        self.code.put(digest, fn)
        with self.lock:
            self.installs += 1
        return fn


def install(state: State, payload: Payload, ctx: Context) -> Reply:
    for digest, data in payload["blobs"].items():
        try:
            state.put(digest, data)
        except Exception as err:  # noqa: BLE001 - unpickling runs the code's own imports: any
            # error says the node cannot load it, and goes back as CodeError with its text
            name = payload.get("name", f"code {digest[:12]}")
            raise errors.CodeError(ctx.node, name, f"{type(err).__name__}: {err}") from err
    return {"installed": list(payload["blobs"])}


def have(state: State, payload: Payload, ctx: Context) -> Reply:
    return {"digests": state.code.keys()}


def run(state: State, payload: Payload, ctx: Context) -> Reply:
    digest = payload["code"]
    fn = state.get(digest)
    if fn is None:
        if payload.get("blob") is None:
            return {"missing": digest}
        try:
            fn = state.put(digest, payload["blob"])
        except Exception as err:  # noqa: BLE001 - as in install: back as CodeError, with its text
            name = payload.get("name", "the shipped function")
            reason = f"{type(err).__name__}: {err}"
            return {"error": _pack_error(errors.CodeError(ctx.node, name, reason)), "index": None,
                    "results": []}
    results = []
    for i, packed in enumerate(payload["calls"]):
        try:
            ctx.check_cancelled()
            args, kwargs = pickling.unpack_call(packed)
            with context.running(ctx):
                value = fn(*args, **kwargs)
            # code only this node has (a module on its own path) goes back by value too
            pickling.register_local_modules()
            results.append(pickling.pack(value, "result"))
        except errors.CancelledError:
            raise  # the caller stopped the job: not the function's error
        except SystemExit as exc:
            err = errors.RemoteError(
                ctx.node, "SystemExit", f"the function called sys.exit({exc.code!r}); an agent "
                "does not exit for one call's code: return or raise instead", "")
            with state.lock:
                state.errors += 1
            return {"error": _pack_error(err), "index": i, "results": results}
        except Exception as err:  # noqa: BLE001 - the user's function raised: its exception
            # goes back to the caller as data and is raised there
            with state.lock:
                state.errors += 1
            return {"error": _pack_error(err), "index": i, "results": results}
        finally:
            with state.lock:
                state.calls += 1
    return {"results": results}


def inspect(state: State, payload: Payload, ctx: Context) -> Reply:
    name = payload.get("name")
    if name:
        return introspect.describe(name, private=bool(payload.get("private")))
    return introspect.node_report(ctx)


def modules(state: State, payload: Payload, ctx: Context) -> Reply:
    return {"modules": introspect.top_level_modules()}


def info(state: State) -> dict[str, Any]:
    with state.lock:
        return {"code_blobs": len(state.code), "installs": state.installs,
                "calls": state.calls, "errors": state.errors,
                "code_cache": state.code.stats()._asdict()}


def _pack_error(err: BaseException) -> dict:
    """An exception as data: type name, message, remote traceback, and the pickled exception
    when it survives a round trip (else the driver raises ``RemoteError``)."""
    cls = type(err)
    pickled: bytes | None
    try:
        pickled = cloudpickle.dumps(err, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(pickled)  # an exception whose __init__ needs other arguments won't rebuild
    except Exception as why:  # noqa: BLE001 - a user's exception may fail to pickle any way;
        # the driver then raises RemoteError with its type, message and traceback instead
        log.debug("%s does not survive pickling: %r", cls.__qualname__, why)
        pickled = None
    return {
        "type": f"{cls.__module__}.{cls.__qualname__}",
        "message": str(err),
        "traceback": "".join(traceback.format_exception(err)),
        "pickled": pickled,
    }

"""Run notebook code on the cluster's nodes: ``call``, ``map`` and the ``remote`` decorator.

Every path here goes through the cluster seam (``kiln.cluster``): agents are found with
``Cluster.agents``, and work is sent with ``AgentHandle.invoke/submit`` to the ``code``
capability (``kiln.code._worker``). Code ships once per agent (see ``_pickling.Ledger``);
arguments cross ``kiln._boundary`` before anything is sent.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar, overload

from kiln import _jobs
from kiln import cluster as _cluster
from kiln.code._pickling import CodeBlob, ledger, pack_call, pack_code, pack_item, unpack
from kiln.errors import AgentLostError, BoundaryError, NoAgentsError, RemoteError

log = logging.getLogger("kiln")

Nodes = str | Sequence[str] | None

# Calls in flight per agent during a map: one running, one queued behind it, so an agent
# never idles waiting for the driver.
_PER_AGENT = 2
# Chunks per agent when the caller gives no chunksize: small enough to balance load and to
# lose little work with a node, large enough to amortise a round trip.
_CHUNKS_PER_AGENT = 4

_round_robin = itertools.count()
R = TypeVar("R")  # what the user's function returns, and so what the call returns
Handle = _cluster.AgentHandle


def call(node: str | None, fn: Callable[..., R], /, *args: Any, timeout: float | None = None,
         **kwargs: Any) -> R:
    """Run ``fn(*args, **kwargs)`` on an agent of ``node`` and return its result.

    ``node`` is a node name (``"gpu1"``), a node and device (``"gpu1/cuda:1"``), or None for
    any ready agent. ``fn`` may be defined in the notebook: it ships by value. An exception
    raised remotely is re-raised here as the same type, with ``err.node`` and
    ``err.remote_traceback`` (``kiln.errors.RemoteError`` when the type cannot be rebuilt).
    ``timeout`` (seconds) stops the call on the agent when it runs longer and raises
    ``CallTimeoutError``; the agent stays usable. (``timeout`` is kiln's: to pass an argument
    of that name to ``fn``, use ``functools.partial`` or ``kiln.remote``.) A call whose code
    kills its agent (``os.abort()``, a segfault, ``os._exit``) raises ``AgentLostError`` saying
    how the process died; the agent restarts by itself and the next call works.
    """
    return _call(node, fn, args, kwargs, timeout=timeout)


def _call(node: str | None, fn: Callable[..., R], args: tuple[Any, ...], kwargs: dict[str, Any],
          timeout: float | None) -> R:
    blob = pack_code(fn)
    packed = pack_call(args, kwargs)  # BoundaryError here: nothing has been sent
    c = _cluster.current()
    handles = agents_for(c, node)
    first = next(_round_robin) % len(handles)
    job = _jobs.Job("code", "run", lambda h: _payload(h, blob, [packed]), f"call of {blob.name}",
                    agents=handles[first:] + handles[:first])
    # retries=0: a call is not assumed idempotent, and code that killed its agent once would
    # most likely kill the next one too: the caller decides.
    policy = _jobs.Policy(on=node, timeout=timeout, retries=0, what=f"kiln.call of {blob.name}",
                          accept=_accept(blob, None), on_lost=ledger.forget)
    response, h = _jobs.run([job], policy)[0]
    return _unpack_result(response["results"][0], h)


def map(fn: Callable[..., R], items: Iterable[Any], nodes: Nodes = "all", ordered: bool = True, *,
        chunksize: int | None = None, star: bool | None = None,
        progress: bool = False, timeout: float | None = None) -> list[R]:
    """Run ``fn`` over ``items`` spread across the ready agents of ``nodes``; return the results.

    Each item is one call: a tuple item is spread as positional arguments (``fn(*item)``),
    anything else is passed as one argument; ``star=True/False`` forces either. Items are sent
    in chunks (``chunksize``, default about four chunks per agent), each agent keeping two in
    flight. Nodes that joined since the last call are picked up (``Cluster.refresh``). When an
    agent or its node is lost, its unfinished chunks re-run on the other agents: every item
    has exactly one result. A chunk that kills the agents it runs on twice (``os.abort()``, a
    segfault) fails the map with ``PoisonJobError`` naming its items and how the agents died.
    ``ordered=False`` returns results in completion order. The first item that raises stops
    the map (the other chunks are cancelled) and re-raises, naming the item. ``timeout`` is
    one deadline for the whole map. ``progress=True`` prints a text bar to stderr.
    """
    items = list(items)
    blob = pack_code(fn)
    packed = [pack_item(item, i, isinstance(item, tuple) if star is None else star)
              for i, item in enumerate(items)]
    if not items:
        return []
    c = _cluster.current()
    c.refresh()
    handles = agents_for(c, nodes)
    size = chunksize or max(1, math.ceil(len(items) / (len(handles) * _CHUNKS_PER_AGENT)))
    chunks = [range(s, min(s + size, len(items))) for s in range(0, len(items), size)]
    _install(c, handles, blob)
    live = [h for h in handles if ledger.holds(h, blob.digest)] or handles
    bar = _Progress(blob.name, len(items)) if progress else None
    order: list[int] = []

    def done(k: int, h: Handle, value: Any) -> None:
        order.append(k)
        if bar is not None:
            bar.advance(h.node, len(chunks[k]))

    jobs = [_jobs.Job("code", "run", _chunk_payload(blob, [packed[i] for i in chunk]),
                      _label(chunk), agents=live)
            for chunk in chunks]
    policy = _jobs.Policy(on=None if nodes == "all" else nodes, timeout=timeout,
                          retries=max(2, len(live)), per_agent=_PER_AGENT,
                          what=f"kiln.map of {blob.name}", accept=_accept(blob, chunks),
                          on_lost=ledger.forget, on_done=done)
    try:
        answers = _jobs.run(jobs, policy)
    finally:
        if bar is not None:
            bar.close()
    keys = range(len(chunks)) if ordered else order
    return [_unpack_result(r, answers[k][1]) for k in keys for r in answers[k][0]["results"]]


def _label(chunk: range) -> str:
    return f"item {chunk[0]}" if len(chunk) == 1 else f"items {chunk[0]}-{chunk[-1]}"


def _chunk_payload(blob: CodeBlob, calls: list[dict]) -> Callable[[Handle], dict]:
    return lambda h: _payload(h, blob, calls)


def _accept(blob: CodeBlob, chunks: list[range] | None
            ) -> Callable[[int, Handle, dict[str, Any]], Any]:
    """The runner's view of a ``code.run`` answer: ship again, raise the remote error, or
    keep (response, agent)."""
    def accept(k: int, h: Handle, response: dict[str, Any]) -> Any:
        if "missing" in response:  # the agent restarted since we shipped: ship again, same agent
            ledger.forget(h, blob.digest)
            return _jobs.RETRY_HERE
        if "error" in response:
            index = None
            if chunks is not None and response.get("index") is not None:
                index = chunks[k][response["index"]]
            raise_remote(response["error"], h, index=index)
        return response, h
    return accept


class _Progress:
    """A rich progress bar, as ``kiln.sample``'s: items done, and how many each node did."""

    def __init__(self, name: str, total: int) -> None:
        from rich import progress as rp
        from rich.console import Console

        self.by_node: dict[str, int] = {}
        self.progress = rp.Progress(rp.TextColumn("{task.description}"), rp.BarColumn(),
                                    rp.MofNCompleteColumn(), rp.TextColumn("{task.fields[nodes]}"),
                                    rp.TimeElapsedColumn(), transient=False,
                                    console=Console(stderr=True))
        self.task = self.progress.add_task(name, total=total, nodes="")
        self.progress.start()

    def advance(self, node: str, n: int) -> None:
        self.by_node[node] = self.by_node.get(node, 0) + n
        nodes = ", ".join(f"{k}: {v}" for k, v in sorted(self.by_node.items()))
        self.progress.update(self.task, advance=n, nodes=nodes)

    def close(self) -> None:
        self.progress.stop()


@overload
def remote(fn: Callable[..., R], *, node: str | None = None,
           timeout: float | None = None) -> RemoteFunction[R]: ...


@overload
def remote(fn: None = None, *, node: str | None = None,
           timeout: float | None = None) -> Callable[[Callable[..., R]], RemoteFunction[R]]: ...


def remote(fn: Callable[..., R] | None = None, *, node: str | None = None,
           timeout: float | None = None
           ) -> RemoteFunction[R] | Callable[[Callable[..., R]], RemoteFunction[R]]:
    """Decorator: calling the function runs it on ``node`` (any ready agent when None).

    ``f.on("gpu2")(...)`` runs it elsewhere, ``f.map(items)`` spreads it, ``f.local(...)``
    runs it here.
    """
    def wrap(f: Callable[..., R]) -> RemoteFunction[R]:
        return RemoteFunction(f, node=node, timeout=timeout)

    return wrap(fn) if fn is not None else wrap


class RemoteFunction(Generic[R]):
    """A function bound to a node; see :func:`remote`."""

    def __init__(self, fn: Callable[..., R], *, node: str | None, timeout: float | None) -> None:
        self.fn = fn
        self.node = node
        self.timeout = timeout
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        return _call(self.node, self.fn, args, kwargs, timeout=self.timeout)

    def on(self, node: str | None) -> RemoteFunction[R]:
        return RemoteFunction(self.fn, node=node, timeout=self.timeout)

    def map(self, items: Iterable[Any], nodes: Nodes = None, ordered: bool = True, *,
            chunksize: int | None = None, star: bool | None = None, progress: bool = False,
            timeout: float | None = None) -> list[R]:
        return map(self.fn, items, nodes or self.node or "all", ordered, chunksize=chunksize,
                   star=star, progress=progress, timeout=timeout)

    def local(self, *args: Any, **kwargs: Any) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<kiln.remote {getattr(self.fn, '__qualname__', self.fn)!r} on {self.node or 'any node'}>"


# --- helpers shared with introspection -----------------------------------------------------------


def agents_for(c: _cluster.Cluster, nodes: Nodes) -> list[Handle]:
    """Ready agents for ``nodes``: None / "all", a node, "node/device", or a list of those.

    Raises ``UnknownNodeError`` (from the cluster) for a name it does not know, and
    ``NoAgentsError`` when the nodes are known but no agent of theirs is ready.
    """
    if nodes is None or nodes == "all":
        found = list(c.agents())
        if not found:
            raise NoAgentsError("no ready agent in the cluster; kiln doctor shows why")
        return found
    specs = [nodes] if isinstance(nodes, str) else list(nodes)
    found = []
    for spec in specs:
        node, _, device = spec.partition("/")
        on_node = list(c.agents(on=node))
        matching = [h for h in on_node if not device or h.device == device]
        if not matching:
            raise NoAgentsError(_no_agent_reason(c, node, device, on_node))
        names = {h.name for h in found}
        found += [h for h in matching if h.name not in names]
    return found


def _no_agent_reason(c: _cluster.Cluster, node: str, device: str, on_node: list[Handle]) -> str:
    if device and on_node:
        return (f"node {node} has no ready agent on device {device}; its agents: "
                + ", ".join(f"{h.node}/{h.device}" for h in on_node))
    for n in c.nodes():
        if n.name == node:
            return (f"node {node} has no ready agent (state {n.state}"
                    + (f": {n.reason}" if getattr(n, "reason", None) else "") + ")")
    return f"node {node} has no ready agent"


def _payload(h: Handle, blob: CodeBlob, calls: list[dict]) -> dict:
    payload = {"code": blob.digest, "name": blob.name, "calls": calls}
    if not ledger.holds(h, blob.digest):
        # Recorded before the reply: a concurrent submit to the same agent must not ship twice.
        payload["blob"] = blob.data
        ledger.record(h, blob)
    return payload


def _install(c: _cluster.Cluster, handles: list[Handle], blob: CodeBlob) -> None:
    """Ship ``blob`` to every agent in ``handles`` that lacks it, all at once."""
    sending = {}
    for h in handles:
        if not ledger.holds(h, blob.digest):
            payload = {"blobs": {blob.digest: blob.data}, "name": blob.name}
            sending[h.submit("code", "install", payload)] = h
            ledger.record(h, blob)
    for pending, h in sending.items():
        try:
            pending.result()
        except AgentLostError:
            c.mark_lost(h)
            ledger.forget(h)
        except BaseException:  # noqa: BLE001 - CodeError (the node cannot load it), or this
            # process interrupted: either way the ledger must not say the node has it; re-raised
            ledger.forget(h, blob.digest)
            raise


def _unpack_result(packed: dict[str, Any], h: Handle) -> Any:
    try:
        return unpack(packed)
    except Exception as err:  # noqa: BLE001 - unpickling runs the result's own code: any error
        # becomes BoundaryError, with its text
        raise BoundaryError("result", f"came from node {h.node} but cannot be rebuilt here "
                            f"({type(err).__name__}: {err}); return plain data, or install "
                            "that code on the driver too") from err


def raise_remote(error: dict[str, Any], h: Handle, index: int | None) -> None:
    """Re-raise an exception the worker returned as data: the same type where it rebuilds,
    else ``RemoteError``; with the node's name and the remote traceback attached."""
    where = f"node {h.node} (agent {h.name})" + (f", item {index}" if index is not None else "")
    exc: BaseException | None = None
    if error.get("pickled"):
        try:
            exc = unpack({"pickled": error["pickled"]})
        except Exception as why:  # noqa: BLE001 - the exception's class may not rebuild here;
            # RemoteError below carries its type, message and traceback instead
            log.debug("%s from %s does not unpickle here: %r", error["type"], where, why)
            exc = None
    if not isinstance(exc, BaseException):
        exc = RemoteError(h.node, error["type"], error["message"], error["traceback"])
    else:
        for attr, value in (("node", h.node), ("remote_traceback", error["traceback"]),
                            ("item", index)):
            try:
                setattr(exc, attr, value)
            except (AttributeError, TypeError):  # exceptions with __slots__
                pass
        exc.add_note(f"raised on {where}; remote traceback:\n{error['traceback']}")
    raise exc


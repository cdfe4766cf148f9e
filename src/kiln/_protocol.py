"""The typed seam between the agent and its capability workers.

A capability is a folder with a ``_worker`` module (``kiln/<capability>/_worker.py``) that
declares::

    OPS = ("encode",)                 # the operations a job may name
    HARD_CANCEL = False               # True: user code that never checks ctx (kiln.call)
    class State:                      # one per agent, made on the capability's first job
        def __init__(self, ctx: AgentContext) -> None: ...
    def encode(state: State, payload: Payload, ctx: Context) -> Reply: ...  # one per op (an Op)
    def info(state: State) -> dict[str, Any]: ...                          # optional
    def warm(state: State) -> None: ...         # optional: KILN_AGENT_PRELOAD names it

and is listed once in ``CAPABILITIES`` below. Adding a capability is its folder, one line here
and its public function in ``kiln/__init__.py``.

Workers are cooperative: a long op calls ``ctx.check_cancelled()`` (or passes
``ctx.cancelled`` to a loop) so that a caller's timeout, stop button or superseding retry frees
the device within one chunk of work. ``HARD_CANCEL`` workers run code that checks nothing, so
the agent also raises ``CancelledError`` inside their thread when a cancel is not heeded.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

from kiln.errors import CancelledError

# capability -> module holding its worker (see the module docstring)
CAPABILITIES: dict[str, str] = {
    "bayes": "kiln.bayes._worker",
    "embed": "kiln.embeddings._worker",
    "code": "kiln.code._worker",
}


def capabilities_named(text: str) -> tuple[list[str], list[str]]:
    """(known, unknown) capability names of a comma-separated list (``KILN_AGENT_PRELOAD``,
    ``kiln up --preload``)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    return [n for n in names if n in CAPABILITIES], [n for n in names if n not in CAPABILITIES]


# What crosses the seam: plain data by key (the payloads' keys are each op's, documented in
# its worker module), with numpy arrays where a capability needs them.
Payload: TypeAlias = dict[str, Any]
Reply: TypeAlias = dict[str, Any]


class Context(Protocol):
    """What an op may use of the context it runs in: a ``JobContext`` on an agent, an
    ``AgentContext`` when called in-process (the gateway's local fallback, tests)."""

    @property
    def name(self) -> str: ...
    @property
    def node(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def platform(self) -> str: ...

    def inflight(self, capability: str) -> int: ...

    def cancelled(self) -> bool: ...

    def check_cancelled(self) -> None: ...


# an op: the worker's function for one of its OPS, run on the agent's thread pool
Op: TypeAlias = Callable[[Any, Payload, Context], Reply]


class WorkerModule(Protocol):
    """What ``kiln/<capability>/worker.py`` provides (checked when the agent loads it)."""

    OPS: tuple[str, ...]
    State: type


@dataclass
class AgentContext:
    """What a capability's per-agent ``State`` may know about the agent it lives in."""

    name: str
    node: str
    device: str
    _inflight: Counter = field(default_factory=Counter, repr=False)
    _inflight_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _progress: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def platform(self) -> str:
        return "gpu" if self.device.startswith("cuda") else "cpu"

    def inflight(self, capability: str) -> int:
        """Jobs of ``capability`` in flight on this agent (its queue depth)."""
        return self._inflight[capability]

    def report(self, key: str, value: Any) -> None:
        """Publish progress under ``key`` (a job's progress is forgotten when the job ends)."""
        self._progress[key] = value

    def cancelled(self) -> bool:
        """Outside a job nothing is ever cancelled (workers called in-process, the gateway's
        local fallback)."""
        return False

    def check_cancelled(self) -> None:
        return None

    def _count(self, capability: str, delta: int) -> None:
        with self._inflight_lock:
            self._inflight[capability] += delta
            if self._inflight[capability] <= 0:
                del self._inflight[capability]


class JobContext:
    """What a worker may know and do while it runs one job: where it runs, whether its caller
    has cancelled it, and how to report progress the driver can read."""

    def __init__(self, agent: AgentContext, job_id: str, cancel: threading.Event) -> None:
        self.agent = agent
        self.job_id = job_id
        self._cancel = cancel
        self._keys: set[str] = set()

    name = property(lambda self: self.agent.name)
    node = property(lambda self: self.agent.node)
    device = property(lambda self: self.agent.device)
    platform = property(lambda self: self.agent.platform)

    def inflight(self, capability: str) -> int:
        return self.agent.inflight(capability)

    def cancelled(self) -> bool:
        """True once the caller cancelled this job (timeout, stop, a retry superseded it)."""
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        """Raise ``CancelledError`` if the caller cancelled this job."""
        if self._cancel.is_set():
            raise CancelledError(f"job {self.job_id} was cancelled on {self.agent.name}")

    def report(self, key: str | None, value: Any = None) -> None:
        """Publish this job's progress; ``report(value)`` or ``report(key, value)``."""
        if value is None and not isinstance(key, str):
            key, value = None, key
        key = key or self.job_id
        self._keys.add(key)
        self.agent._progress[key] = value
        if key != self.job_id:
            self.agent._progress[self.job_id] = value

    def _forget(self) -> None:
        for key in self._keys | {self.job_id}:
            self.agent._progress.pop(key, None)


__all__ = ["CAPABILITIES", "AgentContext", "Context", "JobContext", "Op", "Payload", "Reply",
           "WorkerModule"]

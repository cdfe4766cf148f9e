"""The agent: one long-lived Ray actor per GPU (or per CPU-only node).

Like the seed's GenServer agents, an agent holds device state between calls (compiled
programs, loaded encoders, shipped code) and checks every boundary when it starts: it must
be on a named node, run the driver's code and versions, and its device must compute. An agent
that fails a check does not take work: it stays only long enough to tell the driver why, and
every call to it raises that reason.

Work arrives as ``invoke(capability, op, payload)`` and runs ``kiln.<capability>.worker.<op>``.
The agent is a threaded actor (``max_concurrency`` threads), so ``info`` and ``progress``
answer while a long run is in flight and several requests (embedding batches) can be in
flight at once. Threaded rather than asyncio: an async actor adds ~0.2 ms to every round trip
(0.93 against 0.73 ms for a no-op here), a quarter of the whole call.
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kiln import preflight
from kiln.boundary import to_wire
from kiln.errors import KilnError, PreflightError, SpecError

CAPABILITIES = ("bayes", "embed", "code")

# Set before jax or torch is imported in the agent: JAX would otherwise take 75% of the GPU at
# its first computation, leaving nothing for the encoders that share the device.
_AGENT_ENV = {
    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    # The Rust tokenizer's own threads: on an H200 agent they took 64 texts from 4.0 to 1.4 ms and
    # 16 concurrent 512-text requests from 89k to 105k texts/s (bench/results/embed-encoder-h200.json).
    "TOKENIZERS_PARALLELISM": "true",
}


def agent_name(node: str, device: str) -> str:
    return f"kiln-agent:{node}:{device}"


@dataclass
class AgentContext:
    """What a capability worker may know and do about the agent it runs in."""

    name: str
    node: str
    device: str
    _progress: dict[str, Any] = field(default_factory=dict, repr=False)
    _inflight: Counter = field(default_factory=Counter, repr=False)
    _inflight_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def platform(self) -> str:
        return "gpu" if self.device.startswith("cuda") else "cpu"

    def report(self, key: str, value: Any) -> None:
        """Publish progress under ``key``; the driver reads it with ``AgentHandle.progress``."""
        self._progress[key] = value

    def inflight(self, capability: str) -> int:
        """Calls of ``capability`` in flight on this agent (its queue depth)."""
        return self._inflight[capability]

    def _count(self, capability: str, delta: int) -> None:
        with self._inflight_lock:
            self._inflight[capability] += delta


class Agent:
    """The actor class; ``kiln.cluster`` wraps it with ``ray.remote`` and places it."""

    def __init__(self, node: str | None, device: str, driver_fingerprint: dict[str, Any],
                 env: dict[str, str] | None = None) -> None:
        for key, value in {**_AGENT_ENV, **(env or {})}.items():
            if env and key in env:
                os.environ[key] = value
            else:
                os.environ.setdefault(key, value)
        self.name = agent_name(node or "(unnamed)", device)
        self.node = node
        self.device = device
        self.started = time.time()
        self.refusal: PreflightError | None = None
        self.checks: list[dict[str, str]] = []
        self.fingerprint = preflight.fingerprint()
        self.device_description = ""
        self.ctx = AgentContext(self.name, node or "", device)
        self._states: dict[str, Any] = {}
        self._state_locks = {cap: threading.Lock() for cap in CAPABILITIES}
        self._preflight(driver_fingerprint)

    # -- start-up checks -------------------------------------------------------------------
    def _preflight(self, driver_fingerprint: dict[str, Any]) -> None:
        steps = (
            ("named-node", lambda: preflight.check_named_node(self._own_node_name(), agent=self.name)),
            ("fingerprint", lambda: preflight.check_fingerprint(
                driver_fingerprint, self.fingerprint, node_name=self.node or "", agent=self.name)),
            ("device", self._check_device),
        )
        for check, step in steps:
            try:
                step()
            except PreflightError as err:
                self.refusal = err
                self.checks.append({"check": check, "ok": "no", "detail": str(err)})
                return  # fail fast: later checks mean nothing once one boundary is broken
            self.checks.append({"check": check, "ok": "yes", "detail": ""})

    def _own_node_name(self) -> str | None:
        """The kiln name that Ray says this actor's node carries, or None when unnamed."""
        from kiln.cluster import node_name_of, ray_node_of_current_process

        name = node_name_of(ray_node_of_current_process())
        if name is not None and self.node is not None and name != self.node:
            return None
        return name

    def _check_device(self) -> None:
        self.device_description = preflight.check_device(
            self.device, node_name=self.node or "", agent=self.name)

    # -- the actor's methods ---------------------------------------------------------------
    def ready(self, driver_fingerprint: dict[str, Any] | None = None) -> dict[str, Any]:
        """The agent's state for the driver; re-checks the fingerprint of a (new) driver."""
        if self.refusal is None and driver_fingerprint is not None:
            try:
                preflight.check_fingerprint(driver_fingerprint, self.fingerprint,
                                            node_name=self.node or "", agent=self.name)
            except PreflightError as err:
                return {**self._describe(), "state": "refused", "reason": str(err),
                        "check": err.check, "stale": True}
        return self._describe()

    def info(self) -> dict[str, Any]:
        out = self._describe()
        for cap, state in list(self._states.items()):
            module = importlib.import_module(f"kiln.{cap}.worker")
            if hasattr(module, "info"):
                try:
                    out[cap] = to_wire(module.info(state), root=f"info[{cap!r}]")
                except Exception as err:  # info must never take the agent down
                    out[cap] = {"error": f"{type(err).__name__}: {err}"}
        return out

    def progress(self, key: str) -> Any:
        return self.ctx._progress.get(key)

    def invoke(self, capability: str, op: str, payload: Any) -> Any:
        if self.refusal is not None:
            raise self.refusal
        if (capability, op) == ("agent", "echo"):
            # The smallest round trip through the whole path: health checks and bench/dispatch.py.
            return to_wire(payload, root="result")
        if capability not in CAPABILITIES:
            raise SpecError("capability", f"unknown capability {capability!r}; known: {CAPABILITIES}")
        module = importlib.import_module(f"kiln.{capability}.worker")
        fn = getattr(module, op, None)
        if fn is None or op.startswith("_") or op in ("State", "info"):
            raise SpecError("op", f"capability {capability!r} has no operation {op!r}")
        self.ctx._count(capability, +1)
        try:
            result = fn(self._state_for(capability, module), payload, self.ctx)
        finally:
            self.ctx._count(capability, -1)
        return to_wire(result, root="result")

    def _state_for(self, capability: str, module: Any) -> Any:
        # Created once, under a lock: loading an encoder or compiling may take seconds.
        with self._state_locks[capability]:
            if capability not in self._states:
                self._states[capability] = module.State(self.ctx)
            return self._states[capability]

    def _describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "node": self.node,
            "device": self.device,
            "device_description": self.device_description,
            "state": "refused" if self.refusal else "ready",
            "reason": str(self.refusal) if self.refusal else "",
            "check": getattr(self.refusal, "check", "") if self.refusal else "",
            "checks": list(self.checks),
            "fingerprint": dict(self.fingerprint),
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 1),
            "inflight": dict(self.ctx._inflight),
            "capabilities": sorted(self._states),
        }
        if self.refusal is None:
            out.update(_device_memory(self.device))
        return out


def _device_memory(device: str) -> dict[str, Any]:
    """GPU model and memory as JAX sees them; empty for a CPU agent."""
    if not device.startswith("cuda"):
        return {}
    try:
        import jax

        dev = jax.devices("gpu")[0]
        stats = dev.memory_stats() or {}
        return {"gpu": dev.device_kind, "gpu_memory_bytes": stats.get("bytes_limit"),
                "gpu_memory_in_use_bytes": stats.get("bytes_in_use")}
    except Exception as err:
        return {"gpu": f"unknown ({type(err).__name__})"}


__all__ = ["Agent", "AgentContext", "KilnError", "agent_name"]

"""The agent: one long-lived Ray actor per GPU (or per CPU-only node), owned by the cluster.

Like the seed's GenServer agents, an agent holds device state between calls (compiled
programs, loaded encoders, shipped code) and checks every boundary when it starts: it must
be on a named node, run the driver's code and versions, and its device must compute. An agent
that fails a check does not take work: it stays only long enough to tell the driver why, and
every job sent to it raises that reason.

Work arrives as jobs, ``run(job_id, capability, op, payload)``, and runs the op of
``kiln.<capability>.worker`` (``kiln._protocol`` is that seam) with a ``JobContext`` that knows
whether the caller cancelled it. The agent is a threaded actor with two concurrency groups:
jobs run in the default group (``WORK_THREADS``), while ``cancel``, ``progress``, ``info`` and
``ready`` have threads of their own, so a stop always gets through even when every work
thread is busy. Threaded rather than asyncio: an async actor adds ~0.2 ms to every round trip
(0.93 against 0.73 ms for a no-op here), a quarter of the whole call.

Cancelling is cooperative (workers check ``ctx.cancelled()`` between chunks). Code that never
checks (``kiln.call``) gets ``CancelledError`` raised in its thread after ``HARD_CANCEL_AFTER_S``;
a thread that still does not stop is counted as stuck, and an agent with half its work threads
stuck exits so that Ray restarts it clean (``max_restarts``), rather than stay wedged.

When an agent dies from a fatal signal (``os.abort()``, a segfault) its restart can say so
(``kiln._deaths``), and the driver's error names the signal; it also re-imports in the
background what its capabilities had loaded, so it serves again sooner.

Long: the actor is one object (start-up checks, control methods, jobs, the watchdog, the
restart's warm-up) whose parts share its locks and maps.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
import threading
import time
from collections import OrderedDict
from typing import Any

import ray

from kiln import _deaths
from kiln import _preflight as preflight
from kiln._boundary import to_wire
from kiln._gc import pauses, settle, watch
from kiln._protocol import CAPABILITIES, AgentContext, JobContext, capabilities_named
from kiln.errors import (
    AgentMemoryError,
    CancelledError,
    KilnError,
    PreflightError,
    RemoteError,
    SpecError,
)

WORK_THREADS = 64          # jobs at once: long runs beside many small embedding requests
CONTROL_THREADS = 8        # cancel / progress / info / ready: never queued behind jobs
CONCURRENCY_GROUPS = {"control": CONTROL_THREADS}
WARM_WAIT_S = 300.0        # a job after a restart waits this long at most for the warm-up
HARD_CANCEL_AFTER_S = 1.0  # a cancelled job of user code gets CancelledError raised after this
STUCK_AFTER_S = 30.0       # ... and counts as stuck if it still runs this long after its cancel
_EARLY_CANCELS = 4096      # cancels that arrived before their job: remembered, bounded
_IMPORTED_AT = time.time()  # with the process's start: where a (re)start's seconds went


def _memory_limit() -> int:
    """Bytes of resident memory past which the agent stops the user code running in it."""
    from kiln._settings import settings

    mb = settings().agent_memory_limit_mb
    if mb:
        return int(mb * 2**20)
    import psutil

    return int(0.8 * psutil.virtual_memory().total)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

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
    """``kiln-agent:<node>:gpu<i>`` for the node's i-th GPU, ``kiln-agent:<node>:cpu`` else."""
    if device.startswith("cuda:"):
        device = "gpu" + device.split(":", 1)[1]
    return f"kiln-agent:{node}:{device}"


def local_device(device: str) -> str:
    """The device as the agent's own process sees it. Ray pins a GPU agent to its GPU with
    CUDA_VISIBLE_DEVICES, so the node's second GPU (``cuda:1``) is ``cuda:0`` in its agent."""
    if device.startswith("cuda") and len(
            [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]) == 1:
        return "cuda:0"
    return device


def _hard(capability: str) -> bool:
    return bool(getattr(importlib.import_module(CAPABILITIES[capability]), "HARD_CANCEL", False))


def _raise_in(thread: int, exc: type[BaseException] | None) -> None:
    """Raise ``exc`` in another thread at its next bytecode; None clears one still pending.

    Callers hold ``_jobs_lock`` and act only on registered jobs, so an exception meant for a
    job can never fire in Ray's code or in the next job the same thread runs.
    """
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread), None if exc is None else ctypes.py_object(exc))


class _Job:
    __slots__ = ("capability", "ctx", "cancel", "thread", "cancelled_at", "hard_cancels")

    def __init__(self, capability: str, ctx: JobContext, cancel: threading.Event) -> None:
        self.capability = capability
        self.ctx = ctx
        self.cancel = cancel
        self.thread = threading.get_ident()
        self.cancelled_at: float | None = None
        self.hard_cancels = 0


class Agent:
    """The actor class; ``kiln.cluster`` wraps it with ``ray.remote`` and places it."""

    def __init__(self, node: str | None, device: str, driver_fingerprint: dict[str, Any],
                 env: dict[str, str] | None = None, creator: str = "") -> None:
        init_at = time.time()
        watch()  # collections and their pauses, in the agent's report (kiln._gc)
        for key, value in {**_AGENT_ENV, **(env or {})}.items():
            if env and key in env:
                os.environ[key] = value
            else:
                os.environ.setdefault(key, value)
        self.name = agent_name(node or "(unnamed)", device)
        self.node = node
        self.slot = device                    # the node's view: cuda:1 is its second GPU
        self.device = local_device(device)    # this process's view of the same GPU
        self.creator = creator
        self.started = time.time()
        self.refusal: PreflightError | None = None
        self.checks: list[dict[str, str]] = []
        self.fingerprint = preflight.fingerprint()
        self.device_description = ""
        self.ctx = AgentContext(self.name, node or "", device)
        self._states: dict[str, Any] = {}
        self._state_locks = {cap: threading.Lock() for cap in CAPABILITIES}
        self._jobs: dict[str, _Job] = {}
        self._jobs_lock = threading.Lock()
        self._early_cancels: OrderedDict[str, float] = OrderedDict()
        self.stuck: set[str] = set()
        self.jobs_run = 0
        self.jobs_cancelled = 0
        self.last_cancel_s: float | None = None  # from a cancel to its job's end, the last time
        self.actor_id = ray.get_runtime_context().get_actor_id() or ""
        self.previous_death = _deaths.record_deaths(self.name, self.actor_id)
        self.memory_limit = _memory_limit()
        self.memory_stops = 0
        self.startup: dict[str, float] = {}
        self._baseline = set(_deaths.top_modules())
        self._noted: set[str] = set()
        # Started before the checks: the imports are most of a restart's time, and an agent
        # that the checks refuse is stopped by its driver anyway.
        self.rewarm = _deaths.previously_loaded(self.name, self.actor_id)
        self.preload = _preload()
        self.preload_errors: dict[str, str] = {}  # in info(): why a preload failed
        for capability in self.preload:
            self.rewarm.setdefault(capability, [])
        # set once the warm-up is over: jobs wait for it (see run)
        self._warmed = threading.Event()
        if not self.rewarm:
            self._warmed.set()
        else:
            threading.Thread(target=self._rewarm, name="kiln-agent-rewarm", daemon=True).start()
        self._preflight(driver_fingerprint)
        self.startup.update(_startup_times(init_at, self.checks))
        threading.Thread(target=self._watch, name="kiln-agent-watchdog", daemon=True).start()

    # -- start-up checks -------------------------------------------------------------------
    def _preflight(self, driver_fingerprint: dict[str, Any]) -> None:
        steps = (
            ("named-node", lambda: preflight.check_named_node(self._own_node_name(), agent=self.name)),
            ("fingerprint", lambda: preflight.check_fingerprint(
                driver_fingerprint, self.fingerprint, node_name=self.node or "", agent=self.name)),
            ("device", self._check_device),
        )
        for check, step in steps:
            began = time.perf_counter()
            try:
                step()
            except PreflightError as err:
                self.refusal = err
                self.checks.append({"check": check, "ok": "no", "detail": str(err),
                                    "seconds": round(time.perf_counter() - began, 3)})
                return  # fail fast: later checks mean nothing once one boundary is broken
            self.checks.append({"check": check, "ok": "yes", "detail": "",
                                "seconds": round(time.perf_counter() - began, 3)})

    def _rewarm(self) -> None:
        """A restarted agent imports what its capabilities had imported and makes their states
        now, in the background, rather than on the first job after the restart (module
        docstring of ``kiln._deaths``)."""
        try:
            self._warm_up()
        finally:
            self._warmed.set()
            self.startup["settle_s"] = round(settle(), 3)  # kiln._gc says why

    def _warm_up(self) -> None:
        began = time.perf_counter()
        for capability, modules in self.rewarm.items():
            for module in modules:
                try:
                    importlib.import_module(module)
                except BaseException as err:  # noqa: BLE001 - a warm-up: the job will say why
                    logging.getLogger("kiln").debug("rewarm import %s: %s", module, err)
            path = CAPABILITIES.get(capability)
            if path is None:
                continue
            try:
                module = importlib.import_module(path)
                state = self._state_for(capability, module)
                if capability in self.preload and hasattr(module, "warm"):
                    module.warm(state)
            except BaseException as err:  # noqa: BLE001 - the first job makes it and says why
                if capability in self.preload:  # asked for by name: say so where it is seen
                    self.preload_errors[capability] = f"{type(err).__name__}: {err}"
                    logging.getLogger("kiln").warning("KILN_AGENT_PRELOAD %s failed: %s",
                                                      capability, err)
                else:
                    logging.getLogger("kiln").debug("rewarm state %s: %s", capability, err)
        self.startup["rewarm_s"] = round(time.perf_counter() - began, 3)

    def _note_loaded(self, capability: str) -> None:
        """After a capability's first job here: remember what it imported, for a restart, and
        take what it loaded out of later garbage collections (``kiln._gc``), beside the job."""
        self._noted.add(capability)
        threading.Thread(target=settle, name="kiln-agent-settle", daemon=True).start()
        if _hard(capability):
            return  # user code: its imports are the user's, not re-run behind their back
        new = [m for m in _deaths.top_modules() if m not in self._baseline]
        new += [m for m in self.rewarm.get(capability, []) if m not in new]
        _deaths.note_loaded(self.name, self.actor_id, capability, new)

    def _own_node_name(self) -> str | None:
        """The kiln name that Ray says this actor's node carries, or None when unnamed."""
        node_id = ray.get_runtime_context().get_node_id()
        record = next((n for n in ray.nodes() if n["NodeID"] == node_id), None)
        name = preflight.node_name_of(record)
        if name is not None and self.node is not None and name != self.node:
            return None
        return name

    def _check_device(self) -> None:
        self.device_description = preflight.check_device(
            self.device, node_name=self.node or "", agent=self.name)

    # -- control methods: their own threads, never queued behind jobs -----------------------
    @ray.method(concurrency_group="control")
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

    @ray.method(concurrency_group="control")
    def info(self) -> dict[str, Any]:
        out = self._describe()
        for cap, state in list(self._states.items()):
            module = importlib.import_module(CAPABILITIES[cap])
            if hasattr(module, "info"):
                try:
                    out[cap] = to_wire(module.info(state), root=f"info[{cap!r}]")
                except Exception as err:  # noqa: BLE001 - info must never take the agent
                    # down: the error goes back to the caller in the report, not into a log
                    out[cap] = {"error": f"{type(err).__name__}: {err}"}
        return out

    @ray.method(concurrency_group="control")
    def progress(self, key: str) -> Any:
        return self.ctx._progress.get(key)

    @ray.method(concurrency_group="control")
    def cancel(self, job_ids: list[str]) -> int:
        """Ask the named jobs to stop; returns how many were running here."""
        found = 0
        with self._jobs_lock:
            for job_id in job_ids:
                job = self._jobs.get(job_id)
                if job is None:
                    self._early_cancels[job_id] = time.monotonic()
                    while len(self._early_cancels) > _EARLY_CANCELS:
                        self._early_cancels.popitem(last=False)
                    continue
                found += 1
                if not job.cancel.is_set():
                    job.cancel.set()
                    job.cancelled_at = time.monotonic()
        return found

    @ray.method(concurrency_group="control")
    def last_death(self) -> dict[str, Any]:
        """How the previous process of this agent ended, if it was restarted after a crash."""
        return dict(self.previous_death)

    # -- jobs ------------------------------------------------------------------------------
    def run(self, job_id: str, capability: str, op: str, payload: Any) -> Any:
        """Run one job: ``op`` of ``capability``'s worker on ``payload``."""
        if self.refusal is not None:
            raise self.refusal
        if (capability, op) == ("agent", "echo"):
            # The smallest round trip through the whole path: health checks and bench/dispatch.py.
            return to_wire(payload, root="result")
        module, fn = self._resolve(capability, op)
        cancel = threading.Event()
        ctx = JobContext(self.ctx, job_id, cancel)
        job = _Job(capability, ctx, cancel)
        with self._jobs_lock:
            if self._early_cancels.pop(job_id, None) is not None:
                self.jobs_cancelled += 1
                raise CancelledError(f"job {job_id} was cancelled before it started on {self.name}")
            self._jobs[job_id] = job
        self.ctx._count(capability, +1)
        try:
            # A job that imported the same packages beside the warm-up's thread raced it:
            # transformers, imported from two threads at once, raised "cannot import name
            # 'AutoModel'" (a 422 at the gateway). The job needs those imports anyway.
            waited_until = time.monotonic() + WARM_WAIT_S
            while (not self._warmed.wait(0.25) and not cancel.is_set()
                   and time.monotonic() < waited_until):
                pass
            if cancel.is_set():
                raise CancelledError(f"job {job_id} was cancelled on {self.name}")
            result = fn(self._state_for(capability, module), payload, ctx)
            if cancel.is_set():
                raise CancelledError(f"job {job_id} was cancelled on {self.name}")
            if capability not in self._noted:
                self._note_loaded(capability)
            return to_wire(result, root="result")
        except SystemExit as exc:
            # Shipped code that calls sys.exit() must not take the agent (and everyone's work
            # on it) down: it is that call's error.
            raise RemoteError(self.node or "", "SystemExit",
                              f"the code called sys.exit({exc.code!r}); an agent does not exit "
                              "for one job's code: return or raise instead", "") from None
        except CancelledError:
            self.jobs_cancelled += 1
            if job.cancelled_at is not None:
                self.last_cancel_s = round(time.monotonic() - job.cancelled_at, 3)
            raise CancelledError(f"job {job_id} ({capability}.{op}) was cancelled on "
                                 f"{self.name}; the device is free") from None
        finally:
            self.ctx._count(capability, -1)
            with self._jobs_lock:
                self._jobs.pop(job_id, None)
                self.stuck.discard(job_id)
                self.jobs_run += 1
                _raise_in(job.thread, None)  # a hard cancel sent as the job ended: dropped
            ctx._forget()

    def invoke(self, capability: str, op: str, payload: Any) -> Any:
        """A job without a caller-chosen id (it cannot be cancelled by id)."""
        return self.run(f"anon-{threading.get_ident()}-{time.monotonic_ns()}", capability, op,
                        payload)

    def _resolve(self, capability: str, op: str) -> tuple[Any, Any]:
        path = CAPABILITIES.get(capability)
        if path is None:
            raise SpecError("capability", f"unknown capability {capability!r}; known: "
                            f"{', '.join(CAPABILITIES)}")
        module = importlib.import_module(path)
        if op not in getattr(module, "OPS", ()):
            raise SpecError("op", f"capability {capability!r} has no operation {op!r}; it has "
                            f"{', '.join(module.OPS)}")
        return module, getattr(module, op)

    def _state_for(self, capability: str, module: Any) -> Any:
        # Created once, under a lock: loading an encoder or compiling may take seconds.
        state = self._states.get(capability)
        if state is not None:
            return state
        with self._state_locks[capability]:
            if capability not in self._states:
                self._states[capability] = module.State(self.ctx)
            return self._states[capability]

    # -- the watchdog: cancels that are not heeded ------------------------------------------
    def _watch(self) -> None:
        while True:
            time.sleep(0.25)
            self._watch_memory()
            now = time.monotonic()
            with self._jobs_lock:
                for job_id, job in self._jobs.items():
                    if job.cancelled_at is None:
                        continue
                    late = now - job.cancelled_at
                    if _hard(job.capability) and late > HARD_CANCEL_AFTER_S * (1 + job.hard_cancels):
                        # Raised at the thread's next Python bytecode; a thread blocked inside
                        # C (a sleep, a device call) gets it when that returns.
                        _raise_in(job.thread, CancelledError)
                        job.hard_cancels += 1
                    if late > STUCK_AFTER_S:
                        self.stuck.add(job_id)
            if len(self.stuck) >= WORK_THREADS // 2:
                _deaths.note_death(self.name, f"restarted itself: {len(self.stuck)} of its "
                                   f"{WORK_THREADS} work threads ran cancelled jobs that never "
                                   "stopped")
                os._exit(70)

    def _watch_memory(self) -> None:
        """User code that allocates without bound is stopped before the OOM killer (or Ray's
        memory monitor) takes the whole agent, and everyone's work on it, down."""
        try:
            if _rss() < self.memory_limit:
                return
        except OSError:
            return
        with self._jobs_lock:
            for job in self._jobs.values():
                if _hard(job.capability):
                    _raise_in(job.thread, AgentMemoryError)
                    self.memory_stops += 1

    def _describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "node": self.node,
            "device": self.slot,
            "local_device": self.device,
            "visible_gpus": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
            "device_description": self.device_description,
            "state": "refused" if self.refusal else "ready",
            "reason": str(self.refusal) if self.refusal else "",
            "check": getattr(self.refusal, "check", "") if self.refusal else "",
            "checks": list(self.checks),
            "fingerprint": dict(self.fingerprint),
            "creator": self.creator,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 1),
            "inflight": dict(self.ctx._inflight),
            "jobs": {"running": len(self._jobs), "stuck": len(self.stuck), "run": self.jobs_run,
                     "cancelled": self.jobs_cancelled, "last_cancel_s": self.last_cancel_s,
                     "progress_keys": len(self.ctx._progress)},
            "restarted": bool(self.previous_death),
            "memory": {"rss_bytes": _rss(), "limit_bytes": self.memory_limit,
                       "jobs_stopped": self.memory_stops},
            "capabilities": sorted(self._states),
            "startup": dict(self.startup),
            # a restarted agent re-imports in the background: its memory is still growing
            "rewarming": bool(self.rewarm) and "rewarm_s" not in self.startup,
            "preload_errors": dict(self.preload_errors),
            "gc": pauses(),
        }
        if self.refusal is None:
            out.update(_device_memory(self.device))
        return out


def _preload() -> list[str]:
    """The capabilities ``KILN_AGENT_PRELOAD`` names (unknown names are left out, and logged)."""
    from kiln._settings import settings

    known, unknown = capabilities_named(settings().agent_preload)
    if unknown:
        logging.getLogger("kiln").warning("KILN_AGENT_PRELOAD: unknown capabilities %s (known: %s)",
                                          unknown, ", ".join(CAPABILITIES))
    return known


def _startup_times(init_at: float, checks: list[dict[str, Any]]) -> dict[str, float]:
    """Where this process's start went, in seconds: Ray starting the worker and importing
    kiln (``process``), then ``__init__`` (``checks``, one entry each)."""
    try:
        import psutil

        created = psutil.Process().create_time()
    except Exception:  # noqa: BLE001 - timings are for display
        created = _IMPORTED_AT
    out = {"process_started": round(created, 3), "imports_s": round(init_at - created, 3),
           "init_s": round(time.time() - init_at, 3)}
    for c in checks:
        out[f"{c['check']}_s"] = c.get("seconds", 0.0)
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
    except Exception as err:  # a GPU in a bad state still gets an agent; the report says so
        logging.getLogger("kiln").debug("memory of %s", device, exc_info=True)
        return {"gpu": f"unknown ({type(err).__name__})"}


__all__ = ["Agent", "AgentContext", "KilnError", "agent_name"]

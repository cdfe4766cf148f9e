"""Calls in flight on agents, and the errors a kiln user sees for them (part of the Ray seam).

``Call`` is one job sent to an agent: ``result()``, ``cancel()`` (for real: the agent stops the
job), ``done()``, ``await``. Ray's exceptions become kiln's here: an agent or node that died is
``AgentLostError``, a cancelled job ``CancelledError``, an exception raised by the job is
re-raised as its own type with the node and the remote traceback attached.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import (
    ActorUnavailableError,
    GetTimeoutError,
    ObjectLostError,
    OutOfMemoryError,
    RayActorError,
    RayError,
    RayTaskError,
    TaskCancelledError,
    WorkerCrashedError,
)

from kiln.errors import (
    AgentLostError,
    CallTimeoutError,
    CancelledError,
    KilnError,
    RemoteError,
)

if TYPE_CHECKING:
    from kiln.cluster import AgentHandle

_LOST = (RayActorError, ObjectLostError, WorkerCrashedError)


class Call:
    """A job in flight on an agent: ``result()``, ``cancel()``, ``done()``, or ``await`` it."""

    def __init__(self, handle: AgentHandle, ref: ray.ObjectRef, what: str, job_id: str) -> None:
        self.handle = handle
        self.ref = ref
        self.what = what
        self.job_id = job_id

    def result(self, timeout: float | None = None) -> Any:
        try:
            return ray.get(self.ref, timeout=timeout)
        except GetTimeoutError:
            self.cancel()
            raise CallTimeoutError(
                f"{self.what} on {self.handle.name} ran past its timeout of {timeout} s; it was "
                "cancelled on the agent, which stays usable. Raise timeout= for longer work."
            ) from None
        except BaseException as err:  # noqa: BLE001 - re-raised as the error a kiln user sees
            raise _translate(err, self.handle, self.what) from None

    def cancel(self) -> None:
        """Stop the job for real: drop it from the agent's queue, and tell the agent to stop it
        if it runs (workers check between chunks; user code gets CancelledError raised)."""
        self.handle.cancel([self.job_id])
        try:
            ray.cancel(self.ref)
        except Exception:  # noqa: BLE001 - already finished, or its agent already gone
            pass
        _drain(self.ref)

    def done(self) -> bool:
        ready, _ = ray.wait([self.ref], timeout=0)
        return bool(ready)

    def __await__(self):
        return self._await().__await__()

    async def _await(self) -> Any:
        try:
            return await self.ref
        except BaseException as err:  # noqa: BLE001 - re-raised as the error a kiln user sees
            raise _translate(err, self.handle, self.what) from None


def wait(calls: Sequence[Call], timeout: float | None = None, num_returns: int = 1
         ) -> tuple[list[Call], list[Call]]:
    """Block until ``num_returns`` of ``calls`` are done (or ``timeout``): (done, pending)."""
    if not calls:
        return [], []
    by_ref = {c.ref: c for c in calls}
    done, pending = ray.wait(list(by_ref), num_returns=min(num_returns, len(calls)), timeout=timeout)
    return [by_ref[r] for r in done], [by_ref[r] for r in pending]


def _translate(err: BaseException, handle: AgentHandle, what: str) -> BaseException:
    """Ray's error for a failed call -> the error a kiln user should see."""
    if isinstance(err, (TaskCancelledError,)):
        return CancelledError(f"{what} on {handle.name} was cancelled before it ran")
    if isinstance(err, RayTaskError):
        cause = getattr(err, "cause", None)
        remote_tb = getattr(err, "traceback_str", "") or str(err)
        if isinstance(cause, _LOST):
            return _lost(handle, cause)
        if isinstance(cause, BaseException) and not isinstance(cause, RayError):
            try:
                cause.node = handle.node
                cause.remote_traceback = remote_tb
                if not isinstance(cause, KilnError):
                    cause.add_note(f"(raised on node {handle.node}, agent {handle.name})\n"
                                   f"Remote traceback:\n{remote_tb}")
            except (AttributeError, TypeError):  # a class with __slots__ takes no new attribute
                pass
            return cause
        first = str(err).strip().splitlines()
        return RemoteError(handle.node, type(cause).__name__ if cause else "Exception",
                           first[-1] if first else "", remote_tb)
    if isinstance(err, OutOfMemoryError):
        return AgentLostError(handle.name, "Ray's memory monitor killed it: its node ran out of "
                              "memory (the job allocates more than the node has)", node=handle.node)
    if isinstance(err, _LOST):
        return _lost(handle, err)
    if isinstance(err, RayError):
        return AgentLostError(handle.name, f"{type(err).__name__}: {_first_line(err)}",
                              node=handle.node)
    return err


def _when_back(send: Any, timeout: float) -> Any:
    """``ray.get(send())``, sent again while the actor is restarting (Ray refuses calls to a
    restarting actor at once rather than queue them, as kiln sets ``max_task_retries=0``)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return ray.get(send(), timeout=max(0.1, deadline - time.monotonic()))
        except ActorUnavailableError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


# Refs of cancelled calls: read in the background so that Ray does not print their (expected)
# errors as "unhandled" when they are dropped.
_draining: list[Any] = []
_drain_lock = threading.Lock()
_drainer: threading.Thread | None = None


def _drain(ref: Any) -> None:
    global _drainer
    with _drain_lock:
        _draining.append(ref)
        if _drainer is None or not _drainer.is_alive():
            _drainer = threading.Thread(target=_drain_loop, name="kiln-drain", daemon=True)
            _drainer.start()


def _drain_loop() -> None:
    while True:
        with _drain_lock:
            refs = list(_draining)
        if not refs:
            time.sleep(0.5)
            continue
        try:
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=0.5)
        except Exception:  # noqa: BLE001 - Ray shut down: these refs are gone with it
            with _drain_lock:
                _draining.clear()
            continue
        for ref in done:
            try:
                ray.get(ref, timeout=0)
            except Exception:  # noqa: BLE001 - the expected error of a cancelled call
                pass
        with _drain_lock:
            for ref in done:
                _draining.remove(ref)


def _lost(handle: AgentHandle, err: BaseException) -> AgentLostError:
    lost = AgentLostError(handle.name, _first_line(err), node=handle.node)
    # Ray refuses a call to an agent that is restarting before the call runs: that job did
    # not run there (and did not kill it); the runner waits for the agent instead of blaming.
    lost.restarting = isinstance(err, ActorUnavailableError) and "restarting" in str(err)
    return lost


def _first_line(err: BaseException) -> str:
    lines = [ln for ln in str(err).splitlines() if ln.strip()]
    return lines[0].strip() if lines else type(err).__name__


def progress_of(calls: Sequence[Call], timeout: float = 2.0) -> list[Any]:
    """The progress each call's job last reported (None where none, or its agent is slow)."""
    refs = [c.handle.actor.progress.remote(c.job_id) for c in calls]
    if not refs:
        return []
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    ready_set = set(ready)
    out = []
    for ref in refs:
        try:
            out.append(ray.get(ref) if ref in ready_set else None)
        except RayError:
            out.append(None)
    return out

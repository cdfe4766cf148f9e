"""The job runner: submit · wait · cancel · retry · progress, the same for every capability.

    sample / embed / call / map / gateway      build Jobs, read results
              │  run(jobs, Policy)
              ▼
    job runner (this module)                   one attempt = one job on one agent
              │  AgentHandle.submit(job_id=...) · Call.cancel() · cluster.wait
              ▼
    agents                                     JobContext.cancelled() stops the device work

Rules, the same everywhere:

- **One deadline per request** (``Policy.timeout``), carried through every retry. When it
  passes, every attempt in flight is cancelled on its agent and ``CallTimeoutError`` names
  the jobs that had not finished. ``Policy.attempt_timeout`` optionally moves a slow attempt
  to another agent earlier; the attempt it supersedes is cancelled, not left running.
- **A lost agent** (its process or node died) is marked lost and the job re-runs on the next
  agent, at most ``Policy.retries`` times. Where a capability promises identical results
  (``kiln.sample``: chain keys depend on (seed, chain) only) a re-run gives the same answer.
- **A poison job** is not tried a third time. When an agent dies while its node stays up, the
  jobs it was running are suspects and re-run *alone* on an agent; a suspect that kills its
  agent again while alone is poison: ``PoisonJobError`` names the job, the nodes and how the
  agents died, and the innocent jobs that shared the first agent finish normally.
- **A refusal**: an agent that restarted with other software refuses every job with its
  start-up check's error; it is marked refused (and stopped) and the job goes elsewhere,
  or the run fails at once with ``NoAgentsError`` naming every refusal.
- **A stop** (KeyboardInterrupt in a notebook) or any error cancels every attempt in flight.
- Results come back in job order; a superseded attempt's late answer is dropped, so nothing is
  returned twice.

Long: these rules are one request's decisions (placement, loss, poison, refusals, deadlines,
the head) and read best together.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kiln import cluster as _cluster
from kiln.errors import (
    AgentLostError,
    CallTimeoutError,
    CancelledError,
    ConnectError,
    KilnError,
    NoAgentsError,
    PoisonJobError,
    PreflightError,
)

PROGRESS_EVERY_S = 0.5  # how often running jobs are asked for progress, when it is shown
# Kills of agents (their node still up) after which a job is poison.
POISON_KILLS = 2
# The head is looked at this often while jobs run, and given up on after this long: Ray ends a
# driver whose head is gone after 60 s without a word, so the caller hears it from kiln first.
HEAD_CHECK_EVERY_S = 2.0
HEAD_LOST_AFTER_S = 6.0

RETRY_HERE = object()  # Policy.accept's answer: re-send this job to the same agent now

@dataclass
class Job:
    """One unit of work for one agent: ``op`` of ``capability`` on ``payload``.

    ``payload`` may be a function of the agent (``payload(handle)``), for capabilities whose
    message depends on what that agent already holds (shipped code). ``agents`` is the
    preferred order (a routing strategy's); by default the runner rotates over the ready agents.
    """

    capability: str
    op: str
    payload: Any
    label: str
    agents: Sequence[Any] | None = None


@dataclass
class Policy:
    """How a request's jobs are run; see the module docstring for the rules."""

    on: Any = None                                   # where replacements come from (node names)
    timeout: float | None = None                     # one deadline for the whole request
    attempt_timeout: float | None = None             # move a slow attempt elsewhere
    retries: int = 2                                 # re-runs per job after a lost/slow attempt
    per_agent: int | None = None                     # jobs in flight per agent (None: no cap)
    retryable: Callable[[BaseException], bool] = lambda err: isinstance(err, AgentLostError)
    accept: Callable[[int, Any, Any], Any] | None = None      # result -> result | RETRY_HERE
    on_lost: Callable[[Any], None] | None = None              # an agent was lost (forget it)
    on_start: Callable[[int, Any], None] | None = None        # an attempt was sent (job, agent)
    on_end: Callable[[int, Any], None] | None = None          # an attempt ended, either way
    on_progress: Callable[[int, Any, Any], None] | None = None  # (job, agent, progress value)
    on_done: Callable[[int, Any, Any], None] | None = None      # (job, agent, result)
    what: str = "work"                               # for messages: "kiln.sample", "map of f"


@dataclass
class Attempt:
    job: int
    handle: Any
    call: Any
    started: float
    number: int
    alone: bool = False


@dataclass
class _JobState:
    tried: list[str] = field(default_factory=list)
    attempts: int = 0
    kills: list[str] = field(default_factory=list)
    suspect: bool = False     # was running on an agent that died: re-runs alone
    started: float = 0.0


class _Run:
    """The decisions of one request (the loop that drives them is `run_with_placement`)."""

    def __init__(self, jobs: list[Job], policy: Policy) -> None:
        self.jobs = jobs
        self.policy = policy
        self.cluster = _cluster.current()
        self.agents: list[Any] = []
        self.rotation = itertools.count()
        self.state = [_JobState() for _ in jobs]
        self.results: dict[int, Any] = {}
        self.placement: dict[int, dict[str, Any]] = {}
        self.queue: list[int] = list(range(len(jobs)))
        self.inflight: dict[Any, Attempt] = {}   # call -> attempt
        self.load: dict[str, int] = {}
        self.exclusive: set[str] = set()         # agents running a suspect job alone
        self.lost: set[int] = set()              # id() of handles seen lost in this run
        self.t0 = time.monotonic()
        self.deadline = None if policy.timeout is None else self.t0 + policy.timeout
        self.last_progress = 0.0
        self.head_checked = time.monotonic()
        self.head_silent_since: float | None = None
        if any(j.agents is None for j in jobs):
            self.agents = self._look_for_agents()

    # -- choosing agents -------------------------------------------------------------------
    def _look_for_agents(self) -> list[Any]:
        found = list(self.cluster.agents(self.policy.on))
        if not found:
            raise NoAgentsError(f"{self.policy.what}: no ready agent on "
                                f"{self.policy.on or 'the cluster'}"
                                + self.cluster.why_not_ready(self.policy.on))
        return found

    def _candidates(self, i: int) -> list[Any]:
        """The agents job ``i`` may go to: its preferred ones, else any ready one; never a
        handle this run saw lost (a restarted agent comes back as a new handle)."""
        preferred = self.jobs[i].agents
        for pool in (preferred or [], self.agents):
            usable = [h for h in pool if id(h) not in self.lost]
            if usable:
                return usable
        return []

    def _pick(self, i: int) -> Any | None:
        pool = self._candidates(i)
        if not pool:
            self._require_head()
            self.agents = self._look_for_agents()  # waits for restarted agents, or raises
            pool = self._candidates(i)
            if not pool:
                raise NoAgentsError(f"{self.policy.what}: every agent of "
                                    f"{self.policy.on or 'the cluster'} was lost")
        tried = self.state[i].tried
        fresh = [h for h in pool if h.name not in tried] or pool
        fresh = [h for h in fresh if h.name not in self.exclusive]
        cap = 1 if self.state[i].suspect else self.policy.per_agent
        if self.state[i].suspect:
            fresh = [h for h in fresh if not self.load.get(h.name, 0)]
        elif cap is not None:
            fresh = [h for h in fresh if self.load.get(h.name, 0) < cap]
        if not fresh:
            return None  # every agent is full (or a suspect needs one to itself): wait
        if self.jobs[i].agents is not None:
            return fresh[0]  # the routing strategy's order
        return fresh[next(self.rotation) % len(fresh)]

    # -- sending -----------------------------------------------------------------------------
    def fill(self) -> None:
        waiting = []
        for i in self.queue:
            h = self._pick(i)
            if h is None:
                waiting.append(i)
                continue
            self._send(i, h)
        self.queue = waiting

    def _send(self, i: int, h: Any) -> None:
        job = self.jobs[i]
        st = self.state[i]
        payload = job.payload(h) if callable(job.payload) else job.payload
        call = h.submit(job.capability, job.op, payload)
        st.attempts += 1
        st.tried.append(h.name)
        if not st.started:
            st.started = time.monotonic()
        self.inflight[call] = Attempt(i, h, call, time.monotonic(), st.attempts, st.suspect)
        self.load[h.name] = self.load.get(h.name, 0) + 1
        if st.suspect:
            self.exclusive.add(h.name)
        if self.policy.on_start is not None:
            self.policy.on_start(i, h)

    def _ended(self, attempt: Attempt) -> None:
        self.load[attempt.handle.name] -= 1
        if attempt.alone:
            self.exclusive.discard(attempt.handle.name)
        if self.policy.on_end is not None:
            self.policy.on_end(attempt.job, attempt.handle)

    def calls(self) -> list[Any]:
        return list(self.inflight)

    # -- answers -----------------------------------------------------------------------------
    def collect(self, call: Any) -> None:
        attempt = self.inflight.pop(call)
        h, i = attempt.handle, attempt.job
        self._ended(attempt)
        if i in self.results:
            return  # a superseded attempt answered late: its job is done already
        try:
            value = call.result(timeout=0)
        except AgentLostError as err:
            self._lost(i, h, err, attempt.alone)
            return
        except PreflightError as err:  # restarted with other software: not an attempt
            self.cluster.mark_refused(h, err)
            self._drop(h)
            self.state[i].attempts -= 1
            self.queue.append(i)
            return
        except CancelledError:
            if self.deadline is not None and time.monotonic() >= self.deadline:
                return  # our own deadline cancelled it: expire() reports it
            raise
        except BaseException as err:
            if not self.policy.retryable(err):
                raise
            self._retry(i, err)
            return
        if self.policy.accept is not None:
            value = self.policy.accept(i, h, value)
            if value is RETRY_HERE:
                self._send(i, h)
                return
        self.results[i] = value
        self.placement[i] = {"agent": h.name, "node": h.node, "attempts": self.state[i].attempts,
                             "retries": self.state[i].attempts - 1,
                             "seconds": time.monotonic() - self.state[i].started}
        if self.policy.on_done is not None:
            self.policy.on_done(i, h, value)

    def _lost(self, i: int, h: Any, err: AgentLostError, alone: bool) -> None:
        self._require_head()  # an agent on the head dies with it: say so, do not ask Ray
        self.cluster.mark_lost(h, str(err))
        self._drop(h)
        st = self.state[i]
        if getattr(err, "restarting", False):
            st.attempts -= 1  # it never ran there: not an attempt, not a kill
            self.queue.append(i)
            return
        if _node_alive(self.cluster, h):
            # The agent died while its node stayed up: the job may be what killed it.
            st.kills.append(h.node)
            if alone and len(st.kills) >= POISON_KILLS:
                raise PoisonJobError(self.jobs[i].label, st.kills, h.death()) from None
            st.suspect = True
        if self.state[i].attempts > self.policy.retries:
            # the caller gets the error: say how the agent died (its restart knows)
            raise err.with_death(h.death() if _node_alive(self.cluster, h) else "") from None
        self.queue.append(i)

    def _drop(self, h: Any) -> None:
        """This run sends nothing more to handle ``h`` (a restarted agent is a new handle)."""
        if self.policy.on_lost is not None:
            self.policy.on_lost(h)
        self.lost.add(id(h))
        self.agents = [a for a in self.agents if a is not h]

    def _retry(self, i: int, err: BaseException) -> None:
        if self.state[i].attempts > self.policy.retries:
            raise err
        self.queue.append(i)

    # -- time ---------------------------------------------------------------------------------
    def wait_budget(self) -> float | None:
        """Seconds until something must be looked at: the deadline, a slow attempt, progress."""
        now = time.monotonic()
        limits = []
        if self.deadline is not None:
            limits.append(self.deadline - now)
        if self.policy.attempt_timeout is not None and self.inflight:
            oldest = min(a.started for a in self.inflight.values())
            limits.append(oldest + self.policy.attempt_timeout - now)
        if self.policy.on_progress is not None:
            limits.append(PROGRESS_EVERY_S)
        if self.queue:
            limits.append(0.05)  # agents were full: look again soon
        # never block long in one wait: a notebook's stop (KeyboardInterrupt) is seen between
        limits.append(1.0)
        return max(0.0, min(limits))

    def expire(self) -> None:
        """Cancel what ran too long: the whole request past its deadline, or a slow attempt."""
        now = time.monotonic()
        if self.deadline is not None and now >= self.deadline:
            left = sorted({self.jobs[a.job].label for a in self.inflight.values()}
                          | {self.jobs[i].label for i in self.queue})
            where = sorted({a.handle.name for a in self.inflight.values()})
            self.cancel_all()
            raise CallTimeoutError(
                f"{self.policy.what} ran past its timeout of {self.policy.timeout} s with "
                f"{', '.join(left)} unfinished" + (f" on {', '.join(where)}" if where else "")
                + "; that work was cancelled on its agents, which stay usable. Raise timeout= "
                "for longer work.")
        limit = self.policy.attempt_timeout
        if limit is None:
            return
        for call, a in list(self.inflight.items()):
            if now - a.started >= limit and a.job not in self.results:
                call.cancel()
                self.inflight.pop(call)
                self._ended(a)
                self._retry(a.job, CallTimeoutError(
                    f"{self.jobs[a.job].label} on {a.handle.name} ran past "
                    f"{limit} s; it was cancelled there"))

    def progress(self) -> None:
        if self.policy.on_progress is None:
            return
        now = time.monotonic()
        if now - self.last_progress < PROGRESS_EVERY_S:
            return
        self.last_progress = now
        running = [a for a in self.inflight.values() if a.job not in self.results]
        for a, value in zip(running, _cluster.progress_of([a.call for a in running]),
                            strict=True):
            if value is not None:
                self.policy.on_progress(a.job, a.handle, value)

    def watch_head(self) -> None:
        """Raise ``ConnectError`` when the cluster's head has stopped answering for a while."""
        now = time.monotonic()
        if now - self.head_checked < HEAD_CHECK_EVERY_S:
            return
        self.head_checked = now
        if _cluster.head_reachable(self.cluster.address):
            self.head_silent_since = None
            return
        self.head_silent_since = self.head_silent_since or now
        if now - self.head_silent_since >= HEAD_LOST_AFTER_S:
            raise self._head_lost()

    def _require_head(self) -> None:
        """Raise ``ConnectError`` now when the head does not answer. Losing an agent, or
        looking for agents, asks Ray's GCS (``ray.nodes()``); with the head gone that call
        hangs until Ray ends this process (60 s), and the caller never hears why."""
        if not _cluster.head_reachable(self.cluster.address):
            raise self._head_lost()

    def _head_lost(self) -> ConnectError:
        left = [self.jobs[i].label for i in range(len(self.jobs)) if i not in self.results]
        if len(left) > 8:
            left = [*left[:8], f"... {len(left) - 8} more"]
        self.cancel_all()
        return ConnectError(
            f"the cluster's head ({self.cluster.head_name()} at {self.cluster.address}) stopped "
            f"answering during {self.policy.what} ({', '.join(left) or 'no job'} unfinished; "
            f"{len(self.results)} of {len(self.jobs)} done). Ray ends this process about 60 s "
            "after its head went away (RAY_gcs_rpc_server_reconnect_timeout_s), and a "
            "restarted head is a new cluster: keep what you need now, then kiln.connect() again "
            "from a new process once the head is back.")

    def cancel_all(self) -> None:
        for call, attempt in list(self.inflight.items()):
            call.cancel()
            self._ended(attempt)
        self.inflight.clear()

    def finished(self) -> bool:
        return len(self.results) == len(self.jobs)

    def ordered(self) -> list[Any]:
        return [self.results[i] for i in range(len(self.jobs))]


def _node_alive(cluster: Any, h: Any) -> bool:
    try:
        return cluster.node_alive(h.node_id)
    except KilnError:
        return False


def run(jobs: list[Job], policy: Policy | None = None) -> list[Any]:
    """Run ``jobs`` on the cluster's agents under ``policy``; their results in job order."""
    return run_with_placement(jobs, policy)[0]


def run_with_placement(jobs: list[Job], policy: Policy | None = None
                       ) -> tuple[list[Any], list[dict[str, Any]]]:
    """``run``, plus where each job ran in the end (agent, node, attempts, seconds)."""
    if not jobs:
        return [], []
    r = _Run(jobs, policy or Policy())
    try:
        while not r.finished():
            r.fill()
            calls = r.calls()
            if calls:
                done, _ = _cluster.wait(calls, timeout=r.wait_budget(), num_returns=1)
                for call in done:
                    r.collect(call)
            else:
                time.sleep(min(0.05, r.wait_budget() or 0.05))
            r.expire()
            r.progress()
            r.watch_head()
    except BaseException:
        r.cancel_all()  # a stop, a deadline or an error: nothing is left running on the agents
        raise
    return r.ordered(), [r.placement[i] for i in range(len(jobs))]


__all__ = ["RETRY_HERE", "Job", "Policy", "run", "run_with_placement"]

"""The one place kiln meets Ray (with _agent.py): connect, name nodes, start agents, call them.

Everything else in kiln calls the interface here (``current().agents(...)``,
``AgentHandle.submit``, ``wait``) or the job runner built on it (``kiln._jobs``), the way httpx
keeps the network behind a transport, so a reader meets Ray's details in one file and the
engine could be swapped.

Nodes are named by a Ray custom resource ``kiln-node:<name>`` (``kiln join --name gpu2`` sets
it); agents are named actors ``kiln-agent:<node>:<device>`` pinned to their node.

Long: it is the driver's whole view of the cluster (connect, nodes, agents, their start-up and
re-acquisition after a restart); the calls themselves live in ``_calls.py``.

Agents belong to the cluster, not to a driver: they are detached actors that any driver or
gateway reuses, restarted by Ray after a crash. ``shutdown()`` disconnects this driver and
stops only an embedded Ray it started itself; ``shutdown(agents=True)`` (``kiln down``) is how
an operator stops the agents.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from kiln import _boundary as boundary
from kiln import _preflight as preflight
from kiln._agent import CONCURRENCY_GROUPS, WORK_THREADS, Agent, agent_name
from kiln._calls import Call, _when_back
from kiln._calls import progress_of as progress_of
from kiln._calls import wait as wait
from kiln._poll import refusal, wait_until
from kiln.errors import (
    ConnectError,
    NoAgentsError,
    NotConnectedError,
    UnknownNodeError,
)

if TYPE_CHECKING:
    from rich.console import Console

NAMESPACE = "kiln"
NODE_RESOURCE = preflight.NODE_RESOURCE
NODE_LABEL = preflight.NODE_LABEL
node_name_of = preflight.node_name_of
# One id per driver process: an agent records who created it, so a driver can tell the agents
# it created from those it found (and reused) on the cluster.
DRIVER_ID = uuid.uuid4().hex[:12]
# How long a call path waits for a restarted agent to pass its checks again before it looks
# elsewhere (a restart re-runs the start-up checks: imports and a device test, seconds).
REACQUIRE_TIMEOUT_S = 60.0

log = logging.getLogger("kiln")


# -- node names --------------------------------------------------------------------------------
def ray_node_of_current_process() -> dict[str, Any] | None:
    """Ray's record of the node this process runs on."""
    if not ray.is_initialized():
        return None
    node_id = ray.get_runtime_context().get_node_id()
    return next((n for n in ray.nodes() if n["NodeID"] == node_id), None)


def default_node_name() -> str:
    """A local node is named after its host, or ``local`` when the host has no usable name."""
    host = socket.gethostname().split(".")[0].strip().lower()
    return host if host and host not in ("localhost", "") else "local"


# -- agents and nodes -------------------------------------------------------------------------
@dataclass
class AgentHandle:
    """A ready agent, as the rest of kiln sees it."""

    name: str
    node: str
    device: str
    node_id: str
    actor: ActorHandle = field(repr=False)

    def submit(self, capability: str, op: str, payload: Any = None, *,
               job_id: str | None = None) -> Call:
        """Start job ``op`` of ``capability`` on this agent; returns at once."""
        wire = boundary.to_wire(payload, root="payload")
        job_id = job_id or uuid.uuid4().hex
        ref = self.actor.run.remote(job_id, capability, op, wire)
        return Call(self, ref, f"{capability}.{op}", job_id)

    def invoke(self, capability: str, op: str, payload: Any = None, *,
               timeout: float | None = None) -> Any:
        """Run job ``op`` of ``capability`` on this agent and return its result."""
        return self.submit(capability, op, payload).result(timeout=timeout)

    def cancel(self, job_ids: list[str]) -> None:
        """Ask the agent to stop these jobs (fire and forget: a lost agent stops them anyway)."""
        try:
            self.actor.cancel.remote(list(job_ids))
        except Exception:  # noqa: BLE001 - the actor is gone: nothing runs there any more
            pass

    def progress(self, key: str) -> Any:
        try:
            return ray.get(self.actor.progress.remote(key), timeout=5)
        except Exception:  # noqa: BLE001 - progress is best effort; the job's result is not
            return None

    def info(self, timeout: float = 10) -> dict[str, Any]:
        return Call(self, self.actor.info.remote(), "info", "").result(timeout=timeout)

    def death(self, timeout: float = 30.0) -> str:
        """How this agent's last process died, asked of its restarted process ("" if unknown)."""
        try:
            record = _when_back(lambda: self.actor.last_death.remote(), timeout)
        except Exception:  # noqa: BLE001 - not restarted in time, or its node is gone
            return ""
        return str(record.get("detail", "")) if record else ""


@dataclass
class AgentRecord:
    name: str
    node: str | None
    device: str
    state: str                       # ready | refused | lost | starting
    reason: str = ""
    check: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    handle: AgentHandle | None = None
    started_here: bool = False


@dataclass
class Node:
    """A node of the cluster as kiln sees it."""

    name: str
    address: str
    node_id: str
    alive: bool
    gpus: list[dict[str, Any]]
    agents: list[AgentRecord]
    fingerprint: dict[str, Any]
    resources: dict[str, float] = field(default_factory=dict, repr=False)

    @property
    def state(self) -> str:
        if not self.alive:
            return "dead"
        if any(a.state == "ready" for a in self.agents):
            return "ready"
        if any(a.state == "refused" for a in self.agents):
            return "refused"
        return "starting" if self.agents else "no agents"

    @property
    def reason(self) -> str:
        return "; ".join(a.reason for a in self.agents if a.state != "ready" and a.reason)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "address": self.address, "node_id": self.node_id,
            "state": self.state, "reason": self.reason, "gpus": self.gpus,
            "agents": [{"name": a.name, "device": a.device, "state": a.state, "reason": a.reason,
                        "check": a.check, "checks": a.info.get("checks", [])} for a in self.agents],
            "fingerprint": self.fingerprint,
        }


class Cluster:
    """A connected cluster: its nodes and their agents. Get it from ``kiln.connect()``.

    Safe to use from several threads (the gateway refreshes it while requests read it): the
    agent table is replaced under a lock, never mutated while someone iterates it.
    """

    def __init__(self, address: str, owns_ray: bool, agent_env: dict[str, str] | None,
                 start_timeout: float) -> None:
        self.address = address
        self.owns_ray = owns_ray
        self.driver_fingerprint = preflight.fingerprint()
        self._agent_env = agent_env or {}
        self._start_timeout = start_timeout
        self._agents: dict[str, AgentRecord] = {}
        self._ray_nodes: list[dict[str, Any]] = []
        self._lock = threading.RLock()
        self._refreshing = threading.Lock()

    # -- public ---------------------------------------------------------------------------
    def nodes(self) -> list[Node]:
        """Every node with its name, address, GPUs, agents, fingerprint and state."""
        ray_nodes = ray.nodes()
        with self._lock:
            self._ray_nodes = ray_nodes
            records = list(self._agents.values())
        out = []
        for rn in ray_nodes:
            name = self._display_name(rn)
            agents = [a for a in records if a.info.get("node_id") == rn["NodeID"]]
            fp = next((a.info.get("fingerprint") for a in agents if a.info.get("fingerprint")), {})
            gpus = [{"agent": a.name, "model": a.info.get("gpu", ""),
                     "memory_bytes": a.info.get("gpu_memory_bytes")}
                    for a in agents if a.device.startswith("cuda")]
            out.append(Node(name=name, address=rn.get("NodeManagerAddress", ""),
                            node_id=rn["NodeID"], alive=bool(rn.get("Alive")), gpus=gpus,
                            agents=agents, fingerprint=fp or {},
                            resources=dict(rn.get("Resources") or {})))
        return out

    def agents(self, on: str | Iterable[str] | None = None) -> list[AgentHandle]:
        """Handles of the READY agents on the nodes named by ``on`` (None or "all": every node).

        When none of them is ready (an agent was lost, its node re-joined, an agent restarted
        after a crash), the cluster is looked at again once; then a named node with no ready
        agent raises ``NoAgentsError`` with the reasons, and ``on=None`` returns ``[]``. When
        every one of them refused to start, ``NoAgentsError`` names the refusals at once, even
        for ``on=None``.
        """
        try:
            return self._ready(on)
        except NoAgentsError:
            if self._all_refused(on):
                raise  # at once, with their reasons: waiting would not make them start
            self.refresh(timeout=REACQUIRE_TIMEOUT_S)
        try:
            return self._ready(on)
        except NoAgentsError:
            if on is None or on == "all":
                return []
            raise

    def _ready(self, on: str | Iterable[str] | None) -> list[AgentHandle]:
        with self._lock:
            records = list(self._agents.values())
        ready = [a for a in records if a.state == "ready" and a.handle]
        if on is None or on == "all":
            if not ready:
                raise NoAgentsError("no ready agent in the cluster" + self.why_not_ready())
            return [a.handle for a in ready]
        wanted = [on] if isinstance(on, str) else list(on)
        known = self.node_names()
        for name in wanted:
            if name not in known:
                raise UnknownNodeError(name, known)
        chosen = [a.handle for a in ready if a.node in wanted]
        if not chosen:
            raise NoAgentsError(f"no ready agent on {', '.join(wanted)}" + self.why_not_ready(on))
        return chosen

    def _all_refused(self, on: str | Iterable[str] | None) -> bool:
        """Whether every agent of ``on`` refused to start: looking again cannot change that
        (a refused agent is stopped, and only a restart with the right software helps)."""
        records = self._records_on(on)
        return bool(records) and all(a.state == "refused" for a in records)

    def _records_on(self, on: str | Iterable[str] | None) -> list[AgentRecord]:
        with self._lock:
            records = list(self._agents.values())
        if on is None or on == "all":
            return records
        wanted = [on] if isinstance(on, str) else list(on)
        return [a for a in records if a.node in wanted]

    def why_not_ready(self, on: str | Iterable[str] | None = None) -> str:
        """`` (agent: state reason; ...)`` for the agents of ``on`` that are not ready, or a
        pointer to ``kiln doctor`` when there are none to name."""
        reasons = "; ".join(f"{a.name}: {a.state} {a.reason}".strip()
                            for a in self._records_on(on) if a.state != "ready")
        return f" ({reasons})" if reasons else "; kiln doctor shows why"

    def node_names(self) -> list[str]:
        with self._lock:
            names = {a.node for a in self._agents.values() if a.node and a.state != "lost"}
            names |= {n for n in (node_name_of(rn) for rn in self._ray_nodes if rn.get("Alive"))
                      if n}
        return sorted(names)

    def refresh(self, timeout: float | None = None) -> list[str]:
        """Start agents on nodes that joined, take back agents that restarted, forget agents
        whose node left. Returns the agents that became ready."""
        with self._refreshing:  # one refresh at a time; the others wait for its answer
            ray_nodes = ray.nodes()
            alive = {rn["NodeID"] for rn in ray_nodes if rn.get("Alive")}
            with self._lock:
                self._ray_nodes = ray_nodes
                for rec in self._agents.values():
                    if rec.state == "ready" and rec.info.get("node_id") not in alive:
                        rec.state, rec.reason = "lost", "its node left the cluster"
            return self._start_agents(timeout)

    def head_name(self) -> str:
        """The kiln name of the head's node, from what Ray last said (no Ray call: the head
        may be gone)."""
        host = self.address.rpartition(":")[0].strip("[]")
        with self._lock:
            nodes = list(self._ray_nodes)
        for rn in nodes:
            if rn.get("NodeManagerAddress") == host:
                return self._display_name(rn)
        return "the head"

    def node_alive(self, node_id: str) -> bool:
        """Whether Ray still counts the node alive (a dead agent on a live node is a crash)."""
        return any(rn["NodeID"] == node_id and rn.get("Alive") for rn in ray.nodes())

    def mark_lost(self, handle: AgentHandle, reason: str = "lost during a call") -> None:
        with self._lock:
            rec = self._agents.get(handle.name)
            if rec is not None and rec.handle is handle:
                rec.state, rec.reason = "lost", reason

    def mark_refused(self, handle: AgentHandle, err: BaseException) -> None:
        """The agent refused a job with its start-up refusal (it restarted with other
        software): it gets no more work, and is stopped like an agent refused at start."""
        with self._lock:
            rec = self._agents.get(handle.name)
            if rec is None or rec.handle is not handle:
                return
            rec.state, rec.reason = "refused", str(err)
            rec.check, rec.handle = getattr(err, "check", ""), None
        _kill(handle.actor)
        log.warning("kiln: %s refused work after a restart: %s", handle.name, err)

    def start_agent(self, node_id: str, device: str = "cpu", env: dict[str, str] | None = None,
                    replace: bool = False) -> AgentRecord:
        """Start (or reuse) one agent on a Ray node; ``env`` is set in the agent's process."""
        rn = next((n for n in ray.nodes() if n["NodeID"] == node_id), None)
        if rn is None:
            raise UnknownNodeError(node_id, self.node_names())
        return self._start([(rn, device)], env=env, replace=replace)[0]

    def status(self, console: Console | None = None) -> None:
        """Print the nodes as a table."""
        from kiln._report import print_nodes

        print_nodes(self.nodes(), console=console)

    def _repr_html_(self) -> str:
        from kiln._display import cluster_html

        return cluster_html(self.nodes())

    def __repr__(self) -> str:
        with self._lock:
            ready = sum(a.state == "ready" for a in self._agents.values())
            nodes = len(self._ray_nodes)
        return f"<kiln.Cluster {self.address} nodes={nodes} ready_agents={ready}>"

    # -- agents -----------------------------------------------------------------------------
    def _display_name(self, rn: dict[str, Any]) -> str:
        return node_name_of(rn) or f"unnamed-{rn['NodeID'][:8]}"

    def _start_agents(self, timeout: float | None = None) -> list[str]:
        wanted = []
        with self._lock:
            have = {(a.info.get("node_id"), a.device) for a in self._agents.values()
                    if a.state in ("ready", "refused", "starting")}
            ray_nodes = list(self._ray_nodes)
        for rn in ray_nodes:
            if not rn.get("Alive"):
                continue
            gpus = int((rn.get("Resources") or {}).get("GPU", 0))
            for device in [f"cuda:{i}" for i in range(gpus)] or ["cpu"]:
                if (rn["NodeID"], device) not in have:
                    wanted.append((rn, device))
        return [r.name for r in self._start(wanted, timeout=timeout) if r.state == "ready"]

    def _start(self, wanted: list[tuple[dict[str, Any], str]], env: dict[str, str] | None = None,
               replace: bool = False, timeout: float | None = None) -> list[AgentRecord]:
        """Create (or find) every wanted agent at once, then wait for all their start-up checks
        together: 32 agents start in about the time of one."""
        env = {**self._agent_env, **(env or {})}
        pending = []
        for rn, device in wanted:
            node = node_name_of(rn)
            name = agent_name(node or f"unnamed-{rn['NodeID'][:8]}", device)
            if replace:
                _kill_named(name)
            options = dict(
                name=name, namespace=NAMESPACE, get_if_exists=True, num_cpus=0,
                num_gpus=1 if device.startswith("cuda") else 0,
                # Ray restarts a crashed agent in place (same name, same handle); a job in
                # flight then fails with AgentLostError and is never re-run silently by Ray.
                max_restarts=-1, max_task_retries=0,
                max_concurrency=WORK_THREADS,
                # Ray records every call's state changes for its dashboard and sends them to
                # the GCS: thousands of embedding calls a second, ~60-160 us of the agent's CPU
                # each on the 2-core VM (one call: 540-670 -> 480-550 us). kiln's own /cluster
                # and AgentRecord say what agents do.
                enable_task_events=False,
                scheduling_strategy=NodeAffinitySchedulingStrategy(rn["NodeID"], soft=False),
                # Agents belong to the cluster and outlive this driver: the next driver (and
                # the gateway) reuse them and their compiled caches. Detached also in the
                # embedded default (its Ray stops with the driver anyway): a non-detached
                # actor is destroyed when the driver drops its first handle, which a driver
                # that re-acquires a restarted agent by name does.
                lifetime="detached",
            )
            try:
                # an agent that exists (even one restarting after a crash) is reused as it is;
                # get_if_exists alone may start a second one while the first restarts
                actor = ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:
                actor = _remote_agent().options(**options).remote(
                    node, device, self.driver_fingerprint, env or None, DRIVER_ID)
            pending.append((rn, node, device, name, actor))
        records = []
        refs = [actor.ready.remote(self.driver_fingerprint) for *_, actor in pending]
        limit = self._start_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=limit)
        for (rn, node, device, name, actor), ref in zip(pending, refs, strict=True):
            rec = AgentRecord(name=name, node=node, device=device, state="starting")
            try:
                try:
                    info = ray.get(ref, timeout=max(0.1, deadline - time.monotonic()))
                except ActorUnavailableError:  # restarting after a crash: wait for it
                    info = _when_back(lambda a=actor: a.ready.remote(self.driver_fingerprint),
                                      max(0.1, deadline - time.monotonic()))
                info["node_id"] = rn["NodeID"]
                rec.info, rec.state = info, info["state"]
                rec.reason, rec.check = info.get("reason", ""), info.get("check", "")
                rec.started_here = info.get("creator") == DRIVER_ID
            except (GetTimeoutError, ActorUnavailableError):
                rec.state, rec.reason = "starting", (
                    f"did not pass its start-up checks within {limit:.0f} s (restarting, or "
                    "the node is overloaded?)")
                rec.info = {"node_id": rn["NodeID"]}
            except RayError as err:
                # its process died while starting (or its node did): Ray restarts it, and a
                # later refresh looks again; only an agent's own refusal gets it stopped
                rec.state, rec.reason = "lost", f"did not start: {str(err).splitlines()[0]}"
                rec.info = {"node_id": rn["NodeID"]}
            if rec.state == "ready":
                rec.handle = AgentHandle(name, node or "", device, rn["NodeID"], actor)
            elif rec.state == "refused":
                # A refused agent must never get work, nor hold a GPU: stop it now.
                _kill(actor)
                log.warning("kiln: %s refused to start: %s", name, rec.reason)
            if rec.state == "starting":
                rec.state = "lost"  # looked at again by the next refresh
            with self._lock:
                self._agents[name] = rec
            records.append(rec)
        return records

    def _shutdown_agents(self) -> None:
        """Stop every agent this driver knows of (an operator's act: ``kiln down``)."""
        with self._lock:
            records = list(self._agents.values())
            self._agents.clear()
        for rec in records:
            if rec.handle is not None:
                _kill(rec.handle.actor)
            else:
                _kill_named(rec.name, wait_s=0)


_REMOTE_AGENT: Any = None


def _remote_agent() -> Any:
    # Ray takes concurrency groups only where the class is made remote, not in .options().
    global _REMOTE_AGENT
    if _REMOTE_AGENT is None:
        _REMOTE_AGENT = ray.remote(concurrency_groups=CONCURRENCY_GROUPS,
                                   max_concurrency=WORK_THREADS)(Agent)
    return _REMOTE_AGENT


def _kill(actor: Any) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - already gone
        pass


def _kill_named(name: str, wait_s: float = 30.0) -> None:
    """Kill the named agent and wait until its name is free, so a new one can take it."""

    def gone() -> bool:
        try:
            _kill(ray.get_actor(name, namespace=NAMESPACE))
        except ValueError:
            return True
        return False

    try:
        wait_until(gone, wait_s, f"agent {name} to go")
    except TimeoutError as err:  # the agent that then takes the name says why it cannot
        log.warning("kiln: %s", err)


# -- connect / shutdown -----------------------------------------------------------------------
_current: Cluster | None = None


def current() -> Cluster:
    """The connected cluster; raises ``NotConnectedError`` when there is none."""
    if _current is None:
        raise NotConnectedError()
    return _current


def connect(address: str | None = None, *, name: str | None = None, num_cpus: int | None = None,
            num_gpus: int | None = None, agent_env: dict[str, str] | None = None,
            start_timeout: float = 180.0, log_to_driver: bool = False) -> Cluster:
    """Connect to a cluster and make sure every node has its agents.

    With no address (and no Ray already initialised in this process) a local Ray starts with the
    dashboard off, named ``name`` (default: the host's name, or ``local``), with one agent per
    local GPU or one CPU agent. With ``"HOST:PORT"`` kiln attaches to that running Ray cluster
    (token authentication stays as the cluster has it) and starts or reuses agents on every node.
    """
    global _current
    if _current is not None:
        if address is None or address == _current.address:
            _current.refresh()
            return _current
        shutdown()
    owns = False
    try:
        if ray.is_initialized():
            ctx = ray.get_runtime_context()
            resolved = getattr(ctx, "gcs_address", None) or address or "existing"
        elif address is None:
            node = name or default_node_name()
            ray.init(address="local", namespace=NAMESPACE, include_dashboard=False,
                     resources={NODE_RESOURCE + node: 1}, num_cpus=num_cpus, num_gpus=num_gpus,
                     log_to_driver=log_to_driver, logging_level=logging.WARNING,
                     configure_logging=False)
            owns = True
            resolved = ray.get_runtime_context().gcs_address
        else:
            _fail_fast_if_nothing_listens(address)
            ray.init(address=address, namespace=NAMESPACE, log_to_driver=log_to_driver,
                     logging_level=logging.WARNING, configure_logging=False)
            resolved = address
    except ConnectionError as err:
        raise ConnectError(_connect_hint(address, err, listening=True)) from err
    except RuntimeError as err:
        raise ConnectError(_connect_hint(address, err, listening=True)) from err
    cluster = Cluster(resolved, owns, agent_env, start_timeout)
    _current = cluster
    try:
        cluster.refresh()
    except BaseException:
        shutdown()
        raise
    return cluster


def head_reachable(address: str, timeout: float = 1.0) -> bool:
    """Whether the head's GCS accepts a TCP connection (no Ray call: nothing left pending)."""
    return refusal(address, timeout) is None


def _fail_fast_if_nothing_listens(address: str, timeout: float = 5.0) -> None:
    """Raise ConnectError at once when nothing accepts a connection at HOST:PORT.

    ``ray.init`` would retry an unreachable GCS for minutes (20 tries of ~35 s each) before it
    gives up, so a mistyped address looked like a hang.
    """
    err = refusal(address, timeout)
    if err is not None:
        raise ConnectError(_connect_hint(address, err, listening=False)) from None


def _connect_hint(address: str | None, err: BaseException, listening: bool = True) -> str:
    text = f"{type(err).__name__}: {err}"
    if not address:
        return f"could not start a local Ray: {text}"
    if not listening:
        return (f"could not reach the Ray cluster at {address}: nothing accepts connections there "
                f"({text}). Is `kiln up` running there, and is the port open?")
    # Ray reports a refused token as a plain "Failed to connect": name the likely cause.
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled

        token_mode = is_token_auth_enabled()
    except Exception:  # Ray's private module moved: assume no token was sent
        log.debug("token mode of this Ray unknown", exc_info=True)
        token_mode = False
    hint = (f"could not attach to the Ray cluster at {address}: {text}. Something listens there "
            "but Ray did not let this driver in. Is it a Ray head (`kiln up`)?")
    if not token_mode or "auth" in text.lower() or "token" in text.lower():
        hint += (" Ray clusters use token authentication: set RAY_AUTH_MODE=token and "
                 "RAY_AUTH_TOKEN=<the head's token> on this machine (`ray get-auth-token` on the "
                 "head prints it).")
    return hint


def shutdown(agents: bool = False, *, keep_agents: bool | None = None) -> None:
    """Disconnect this driver.

    Agents belong to the cluster: other notebooks, scripts and the gateway use them, so they
    keep running. Only what this driver started for itself alone stops: an embedded local Ray
    (``kiln.connect()`` with no address) and everything in it. ``agents=True`` also stops every
    agent of the cluster, the operator's ``kiln down``.
    """
    global _current
    del keep_agents  # the old name of the default: agents were killed unless it was True
    cluster, _current = _current, None
    if cluster is None:
        return
    if agents and not cluster.owns_ray:
        cluster._shutdown_agents()
    ray.shutdown()

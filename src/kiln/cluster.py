"""The one place kiln meets Ray: connect, name nodes, start agents, call them.

Everything else in kiln calls the interface here (``current().agents(...)``,
``AgentHandle.invoke/submit``, ``wait``), the way httpx keeps the network behind a transport,
so a reader meets Ray's details in one file and the engine could be swapped.

Nodes are named by a Ray custom resource ``kiln-node:<name>`` (``kiln join --name gpu2`` sets
it); agents are named actors ``kiln-agent:<node>:<device>`` pinned to their node.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import (
    GetTimeoutError,
    ObjectLostError,
    RayActorError,
    RayError,
    RayTaskError,
    TaskCancelledError,
    WorkerCrashedError,
)
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from kiln import boundary, preflight
from kiln.agent import Agent, agent_name
from kiln.errors import (
    AgentLostError,
    CallTimeoutError,
    ConnectError,
    KilnError,
    NoAgentsError,
    NotConnectedError,
    RemoteError,
    UnknownNodeError,
)

NAMESPACE = "kiln"
NODE_RESOURCE = "kiln-node:"
NODE_LABEL = "kiln-node"
_LOST = (RayActorError, ObjectLostError, WorkerCrashedError)

log = logging.getLogger("kiln")


# -- node names --------------------------------------------------------------------------------
def node_name_of(ray_node: dict[str, Any] | None) -> str | None:
    """The kiln name a Ray node carries (custom resource or label), or None."""
    if not ray_node:
        return None
    for key in (ray_node.get("Resources") or {}):
        if key.startswith(NODE_RESOURCE):
            return key[len(NODE_RESOURCE):]
    return (ray_node.get("Labels") or {}).get(NODE_LABEL)


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


# -- calls -------------------------------------------------------------------------------------
class Call:
    """A call in flight on an agent: ``result()``, ``cancel()``, ``done()``, or ``await`` it."""

    def __init__(self, handle: AgentHandle, ref: ray.ObjectRef, what: str) -> None:
        self.handle = handle
        self.ref = ref
        self.what = what

    def result(self, timeout: float | None = None) -> Any:
        try:
            return ray.get(self.ref, timeout=timeout)
        except GetTimeoutError:
            self.cancel()
            raise CallTimeoutError(
                f"{self.what} on {self.handle.name} ran past its timeout of {timeout} s; it was "
                "cancelled and the agent stays usable. Raise timeout= for longer work.") from None
        except BaseException as err:
            raise _translate(err, self.handle, self.what) from None

    def cancel(self) -> None:
        try:
            ray.cancel(self.ref)
        except Exception:  # already finished or its agent already gone: nothing to cancel
            pass

    def done(self) -> bool:
        ready, _ = ray.wait([self.ref], timeout=0)
        return bool(ready)

    def __await__(self):
        return self._await().__await__()

    async def _await(self) -> Any:
        try:
            return await self.ref
        except BaseException as err:
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
        return CallTimeoutError(f"{what} on {handle.name} was cancelled")
    if isinstance(err, RayTaskError):
        cause = getattr(err, "cause", None)
        remote_tb = getattr(err, "traceback_str", "") or str(err)
        if isinstance(cause, _LOST):
            return AgentLostError(handle.name, str(cause).splitlines()[0] if str(cause) else "")
        if isinstance(cause, BaseException) and not isinstance(cause, RayError):
            try:
                cause.node = handle.node
                cause.remote_traceback = remote_tb
                if not isinstance(cause, KilnError):
                    cause.add_note(f"(raised on node {handle.node}, agent {handle.name})\n"
                                   f"Remote traceback:\n{remote_tb}")
            except Exception:
                pass
            return cause
        first = str(err).strip().splitlines()
        return RemoteError(handle.node, type(cause).__name__ if cause else "Exception",
                           first[-1] if first else "", remote_tb)
    if isinstance(err, _LOST):
        return AgentLostError(handle.name, str(err).splitlines()[0] if str(err) else "")
    if isinstance(err, RayError):
        return AgentLostError(handle.name, f"{type(err).__name__}: {err}")
    return err


# -- agents and nodes -------------------------------------------------------------------------
@dataclass
class AgentHandle:
    """A ready agent, as the rest of kiln sees it."""

    name: str
    node: str
    device: str
    node_id: str
    actor: Any = field(repr=False)

    def submit(self, capability: str, op: str, payload: Any = None) -> Call:
        """Start ``kiln.<capability>.worker.<op>(payload)`` on this agent; returns at once."""
        wire = boundary.to_wire(payload, root="payload")
        return Call(self, self.actor.invoke.remote(capability, op, wire), f"{capability}.{op}")

    def invoke(self, capability: str, op: str, payload: Any = None, *,
               timeout: float | None = None) -> Any:
        """Run ``kiln.<capability>.worker.<op>(payload)`` on this agent and return its result."""
        return self.submit(capability, op, payload).result(timeout=timeout)

    def progress(self, key: str) -> Any:
        try:
            return ray.get(self.actor.progress.remote(key), timeout=5)
        except Exception:
            return None

    def info(self, timeout: float = 10) -> dict[str, Any]:
        return Call(self, self.actor.info.remote(), "info").result(timeout=timeout)


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
    """A connected cluster: its nodes and their agents. Get it from ``kiln.connect()``."""

    def __init__(self, address: str, owns_ray: bool, agent_env: dict[str, str] | None,
                 start_timeout: float) -> None:
        self.address = address
        self.owns_ray = owns_ray
        self.driver_fingerprint = preflight.fingerprint()
        self._agent_env = agent_env or {}
        self._start_timeout = start_timeout
        self._agents: dict[str, AgentRecord] = {}
        self._ray_nodes: list[dict[str, Any]] = []

    # -- public ---------------------------------------------------------------------------
    def nodes(self) -> list[Node]:
        """Every node with its name, address, GPUs, agents, fingerprint and state."""
        self._ray_nodes = ray.nodes()
        out = []
        for rn in self._ray_nodes:
            name = self._display_name(rn)
            agents = [a for a in self._agents.values() if a.info.get("node_id") == rn["NodeID"]]
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
        """Handles of the READY agents on the nodes named by ``on`` (None or "all": every node)."""
        ready = [a for a in self._agents.values() if a.state == "ready" and a.handle]
        if on is None or on == "all":
            return [a.handle for a in ready]
        wanted = [on] if isinstance(on, str) else list(on)
        known = self.node_names()
        for name in wanted:
            if name not in known:
                raise UnknownNodeError(name, known)
        chosen = [a.handle for a in ready if a.node in wanted]
        if not chosen:
            reasons = "; ".join(f"{a.name}: {a.state} {a.reason}".strip()
                                for a in self._agents.values() if a.node in wanted)
            raise NoAgentsError(f"no ready agent on {', '.join(wanted)}"
                                + (f" ({reasons})" if reasons else ""))
        return chosen

    def node_names(self) -> list[str]:
        names = {a.node for a in self._agents.values() if a.node and a.state != "lost"}
        names |= {n for n in (node_name_of(rn) for rn in self._ray_nodes if rn.get("Alive")) if n}
        return sorted(names)

    def refresh(self) -> list[str]:
        """Start agents on nodes that joined, forget agents whose node left. Returns new agents."""
        self._ray_nodes = ray.nodes()
        alive = {rn["NodeID"] for rn in self._ray_nodes if rn.get("Alive")}
        for rec in self._agents.values():
            if rec.state == "ready" and rec.info.get("node_id") not in alive:
                rec.state, rec.reason = "lost", "its node left the cluster"
        return self._start_agents()

    def mark_lost(self, handle: AgentHandle, reason: str = "lost during a call") -> None:
        rec = self._agents.get(handle.name)
        if rec is not None:
            rec.state, rec.reason = "lost", reason

    def start_agent(self, node_id: str, device: str = "cpu", env: dict[str, str] | None = None,
                    replace: bool = False) -> AgentRecord:
        """Start (or reuse) one agent on a Ray node; ``env`` is set in the agent's process."""
        rn = next((n for n in ray.nodes() if n["NodeID"] == node_id), None)
        if rn is None:
            raise UnknownNodeError(node_id, self.node_names())
        return self._start([(rn, device)], env=env, replace=replace)[0]

    def status(self, console: Any = None) -> None:
        """Print the nodes as a table."""
        from kiln.report import print_nodes

        print_nodes(self.nodes(), console=console)

    def _repr_html_(self) -> str:
        from kiln.display import cluster_html

        return cluster_html(self.nodes())

    def __repr__(self) -> str:
        ready = sum(a.state == "ready" for a in self._agents.values())
        return f"<kiln.Cluster {self.address} nodes={len(self._ray_nodes)} ready_agents={ready}>"

    # -- agents -----------------------------------------------------------------------------
    def _display_name(self, rn: dict[str, Any]) -> str:
        return node_name_of(rn) or f"unnamed-{rn['NodeID'][:8]}"

    def _start_agents(self) -> list[str]:
        wanted = []
        have = {(a.info.get("node_id"), a.device) for a in self._agents.values()
                if a.state in ("ready", "refused", "starting")}
        for rn in self._ray_nodes:
            if not rn.get("Alive"):
                continue
            gpus = int((rn.get("Resources") or {}).get("GPU", 0))
            for device in [f"cuda:{i}" for i in range(gpus)] or ["cpu"]:
                if (rn["NodeID"], device) not in have:
                    wanted.append((rn, device))
        return [r.name for r in self._start(wanted)]

    def _start(self, wanted: list[tuple[dict[str, Any], str]], env: dict[str, str] | None = None,
               replace: bool = False) -> list[AgentRecord]:
        env = {**self._agent_env, **(env or {})}
        pending = []
        for rn, device in wanted:
            node = node_name_of(rn)
            name = agent_name(node or f"unnamed-{rn['NodeID'][:8]}", device)
            if replace:
                _kill_named(name)
            options = dict(
                name=name, namespace=NAMESPACE, get_if_exists=True, num_cpus=0,
                num_gpus=1 if device.startswith("cuda") else 0, max_restarts=0,
                max_concurrency=64,  # threads: long runs, info and progress at once
                scheduling_strategy=NodeAffinitySchedulingStrategy(rn["NodeID"], soft=False),
            )
            if not self.owns_ray:
                # Agents outlive this driver so the next one reuses their compiled caches.
                options["lifetime"] = "detached"
            actor = ray.remote(Agent).options(**options).remote(
                node, device, self.driver_fingerprint, env or None)
            pending.append((rn, node, device, name, actor))
        records = []
        refs = [actor.ready.remote(self.driver_fingerprint) for *_, actor in pending]
        deadline = time.monotonic() + self._start_timeout
        for (rn, node, device, name, actor), ref in zip(pending, refs, strict=True):
            rec = AgentRecord(name=name, node=node, device=device, state="starting",
                              started_here=True)
            try:
                info = ray.get(ref, timeout=max(1.0, deadline - time.monotonic()))
                info["node_id"] = rn["NodeID"]
                rec.info, rec.state = info, info["state"]
                rec.reason, rec.check = info.get("reason", ""), info.get("check", "")
            except GetTimeoutError:
                rec.state, rec.reason = "refused", (
                    f"did not start within {self._start_timeout:.0f} s (is the node overloaded?)")
                rec.info = {"node_id": rn["NodeID"]}
            except RayError as err:
                rec.state, rec.reason = "refused", f"failed to start: {str(err).splitlines()[0]}"
                rec.info = {"node_id": rn["NodeID"]}
            if rec.state == "ready":
                rec.handle = AgentHandle(name, node or "", device, rn["NodeID"], actor)
            else:
                # A refused agent must never get work, nor hold a GPU: stop it now.
                _kill(actor)
                log.warning("kiln: %s refused to start: %s", name, rec.reason)
            self._agents[name] = rec
            records.append(rec)
        return records

    def _shutdown_agents(self) -> None:
        for rec in self._agents.values():
            if rec.started_here and rec.handle is not None:
                _kill(rec.handle.actor)
        self._agents.clear()


def _kill(actor: Any) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:
        pass


def _kill_named(name: str, wait_s: float = 30.0) -> None:
    """Kill the named agent and wait until its name is free, so a new one can take it."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            _kill(ray.get_actor(name, namespace=NAMESPACE))
        except ValueError:
            return
        time.sleep(0.1)


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


def _fail_fast_if_nothing_listens(address: str, timeout: float = 5.0) -> None:
    """Raise ConnectError at once when nothing accepts a connection at HOST:PORT.

    ``ray.init`` would retry an unreachable GCS for minutes (20 tries of ~35 s each) before it
    gives up, so a mistyped address looked like a hang.
    """
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return  # "auto", "ray://...": Ray's own address forms, left to Ray
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as err:
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
        token_mode = False
    hint = (f"could not attach to the Ray cluster at {address}: {text}. Something listens there "
            "but Ray did not let this driver in. Is it a Ray head (`kiln up`)?")
    if not token_mode or "auth" in text.lower() or "token" in text.lower():
        hint += (" Ray clusters use token authentication: set RAY_AUTH_MODE=token and "
                 "RAY_AUTH_TOKEN=<the head's token> on this machine (`ray get-auth-token` on the "
                 "head prints it).")
    return hint


def shutdown(keep_agents: bool = False) -> None:
    """Stop what ``connect`` started: its agents, and the local Ray if it started one."""
    global _current
    cluster, _current = _current, None
    if cluster is None:
        return
    if cluster.owns_ray:
        ray.shutdown()
        return
    if not keep_agents:
        cluster._shutdown_agents()
    ray.shutdown()

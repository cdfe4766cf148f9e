"""Every error kiln raises, in one place.

Each message says what happened, where (node, agent, path in the data) and what to do.

    KilnError
    ├── NotConnectedError          no cluster: call kiln.connect() first
    ├── ConnectError               the Ray cluster could not be reached or attached to
    ├── PreflightError             an agent refused to start (its start-up checks)
    │   ├── UnnamedNodeError       the node carries no kiln name / not part of a named cluster
    │   ├── FingerprintMismatchError  versions or kiln's code differ from the driver's
    │   └── DeviceInitError        the agent's device did not initialise
    ├── UnknownNodeError           a node name that the cluster does not know
    ├── NoAgentsError              no ready agent can take the work
    ├── BoundaryError              a value that cannot cross the wire (names its path)
    ├── SpecError                  a bad dispatch spec or option (names the field)
    ├── SettingsError              a KILN_* environment variable kiln cannot use (names it)
    ├── ModelError                 a bad Bayesian model, found on the driver before dispatch
    │   ├── UnknownReferenceError
    │   ├── CycleError
    │   ├── ShapeError
    │   ├── DomainError
    │   ├── ModelTypeError
    │   ├── DataError
    │   └── DuplicateObservationError
    ├── SamplingError              sampling failed on an agent
    ├── CancelledError             work stopped on its agent because its caller cancelled it
    │   └── CallTimeoutError       a call ran past its deadline (it was cancelled)
    ├── AgentLostError             the agent (or its node) died during a call
    │   └── PoisonJobError         a job killed the agents it ran on (names the item and signal)
    ├── RemoteError                an exception raised on a node, with its traceback
    ├── CodeError                  shipped code could not be loaded on a node
    ├── AgentMemoryError           a job took the agent past its memory limit (it was stopped)
    ├── EmbedError                 embedding inference
    │   ├── ModelNotAvailableError a model that is not available offline
    │   └── EmbedInputError        bad texts
    └── GatewayError               the HTTP gateway
        └── DeadlineExceededError  a request ran past its one deadline (cancelled on its agent)
"""

from __future__ import annotations


def _rebuild(cls: type, message: str, state: dict) -> KilnError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class KilnError(Exception):
    """Base of every kiln error."""

    def __reduce__(self):
        # Errors cross the wire (agent -> driver); their constructors take other arguments than
        # the message, so rebuild from the message and attributes instead of from ``args``.
        return _rebuild, (type(self), str(self), dict(self.__dict__))


class NotConnectedError(KilnError):
    """No cluster is connected in this process."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or "kiln is not connected: call kiln.connect() first "
                         "(no address starts the embedded default)")


class ConnectError(KilnError):
    """The Ray cluster could not be started or attached to."""


class PreflightError(KilnError):
    """An agent refused to start because a boundary check failed."""

    check = "preflight"

    def __init__(self, message: str, *, node: str | None = None, agent: str | None = None):
        self.node = node
        self.agent = agent
        where = f"agent {agent}: " if agent else (f"node {node}: " if node else "")
        super().__init__(where + message)


class UnnamedNodeError(PreflightError):
    """The agent's node has no kiln name, or the process is not part of a named cluster."""

    check = "named-node"


class FingerprintMismatchError(PreflightError):
    """The agent's fingerprint differs from the driver's on keys that break compatibility."""

    check = "fingerprint"

    def __init__(self, differences: dict[str, tuple[object, object]], **where) -> None:
        self.differences = differences
        lines = [f"  {k}: driver has {d!r}, node has {n!r}" for k, (d, n) in sorted(differences.items())]
        super().__init__(
            "the node's software differs from the driver's on "
            + ", ".join(sorted(differences))
            + ":\n" + "\n".join(lines)
            + "\nInstall the same versions (and the same kiln source) on every node, "
            "then restart the agent (kiln doctor shows every node).",
            **where,
        )


class DeviceInitError(PreflightError):
    """The agent's device did not run a small computation."""

    check = "device"


class UnknownNodeError(KilnError):
    """A node name the cluster does not know."""

    def __init__(self, node: str, known: list[str]) -> None:
        self.node = node
        self.known = known
        super().__init__(
            f"unknown node {node!r}; known nodes: {', '.join(known) or '(none)'}. "
            "Start one with `kiln join HEAD_ADDRESS --name NAME`."
        )


class NoAgentsError(KilnError):
    """No ready agent can take the work."""


class BoundaryError(KilnError):
    """A value that cannot cross between driver and agent."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class SpecError(KilnError, ValueError):
    """A bad dispatch spec or sampling option; names the field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class SettingsError(KilnError, ValueError):
    """A ``KILN_*`` environment variable that kiln cannot use; names the variable."""

    def __init__(self, variable: str, message: str) -> None:
        self.variable = variable
        super().__init__(f"{variable}: {message} (`kiln doctor` lists every KILN_* variable)")


class ModelError(KilnError, ValueError):
    """A bad Bayesian model; names the variable and the field."""

    def __init__(self, variable: str | None, field: str | None, message: str) -> None:
        self.variable = variable
        self.field = field
        where = ".".join(p for p in (variable, field) if p)
        super().__init__(f"{where}: {message}" if where else message)


class UnknownReferenceError(ModelError):
    """A parameter refers to a variable that is not in the model."""


class CycleError(ModelError):
    """Variables refer to each other in a cycle."""


class ShapeError(ModelError):
    """Shapes that do not agree."""


class DomainError(ModelError):
    """A constant parameter outside its domain (a scale <= 0, say)."""


class ModelTypeError(ModelError, TypeError):
    """A parameter of the wrong type."""


class DataError(ModelError):
    """Observed or given data that cannot be used (NaN, inf, wrong shape)."""


class DuplicateObservationError(ModelError):
    """The same variable observed twice."""


class SamplingError(KilnError):
    """Sampling failed on an agent."""


class CancelledError(KilnError):
    """Work was stopped on its agent because its caller cancelled it (stop, timeout, retry).

    Raised inside an agent by ``ctx.check_cancelled()`` (and by the sampler between chunks); the
    device is free again once it propagates.
    """


class CallTimeoutError(CancelledError, TimeoutError):
    """A call ran past its deadline; it was cancelled on its agent and the agent stays usable."""


class AgentLostError(KilnError):
    """The agent, or its node, died during a call."""

    def __init__(self, agent: str, detail: str = "", *, node: str | None = None,
                 death: str = "") -> None:
        self.agent = agent
        self.node = node
        self.detail = detail
        self.death = death
        self.restarting = False  # the agent was restarting: the job never ran there
        text = f"agent {agent}" + (f" on node {node}" if node else "") + " was lost"
        if death:
            text += f"; its process was {death}" if death.startswith("killed") else f"; {death}"
        super().__init__(text + (f" ({detail})" if detail else ""))

    @property
    def detail_known(self) -> bool:
        return bool(self.death)

    def with_death(self, death: str) -> AgentLostError:
        """The same error, saying how the agent's process died (asked of its restart)."""
        if not death:
            return self
        return AgentLostError(self.agent, self.detail, node=self.node, death=death)


class PoisonJobError(AgentLostError):
    """A job killed the agents it ran on (twice, their nodes up): it is not tried again."""

    def __init__(self, job: str, nodes: list[str], death: str = "") -> None:
        self.job = job
        self.nodes = list(nodes)
        KilnError.__init__(
            self, f"{job} killed the agent it ran on {len(nodes)} times (on "
            f"{', '.join(nodes)})" + (f"; the last was {death}" if death else "")
            + ". It was not tried again: the code crashes its process (os.abort, a segfault in "
            "native code, os._exit, or memory). The agents restart by themselves.")
        self.agent, self.node, self.detail, self.death = "", nodes[-1] if nodes else None, "", death


class RemoteError(KilnError):
    """An exception raised on a node whose type cannot be rebuilt on the driver."""

    def __init__(self, node: str, type_name: str, message: str, remote_traceback: str) -> None:
        self.node = node
        self.type_name = type_name
        self.remote_traceback = remote_traceback
        super().__init__(f"{type_name} on node {node}: {message}\n\nRemote traceback:\n{remote_traceback}")


class CodeError(KilnError):
    """Code shipped to a node could not be loaded there (it needs a module the node lacks)."""

    def __init__(self, node: str, name: str, reason: str) -> None:
        self.node = node
        self.name = name
        super().__init__(
            f"{name} could not be loaded on node {node}: {reason}. Installed packages travel by "
            "reference and must be installed on every node; local code (a file next to the "
            "notebook) travels by value."
        )
        self._init_args = (node, name, reason)

    def __reduce__(self):
        return (type(self), self._init_args)


class AgentMemoryError(KilnError, MemoryError):
    """A job took its agent past the agent's memory limit; it was stopped, the agent lives.

    Raised inside the job's thread by the agent's watchdog (so it is made with no arguments).
    """

    def __init__(self, message: str = "") -> None:
        super().__init__(message or (
            "the job was stopped: its agent's memory passed the agent's limit "
            "(KILN_AGENT_MEMORY_LIMIT_MB, default 80% of the node's memory) while it ran. The "
            "agent and the node keep running; use less memory per call, or split the work."))

    def __reduce__(self):
        # MemoryError forbids the bare __new__ that KilnError's rebuild uses
        return type(self), (str(self),)


class EmbedError(KilnError):
    """Embedding inference failed."""


class ModelNotAvailableError(EmbedError):
    """An embedding model that is not available offline (nothing is downloaded)."""


class EmbedInputError(EmbedError, ValueError):
    """Bad texts for embedding; names the item."""


class GatewayError(KilnError):
    """The HTTP gateway could not serve."""


class DeadlineExceededError(GatewayError):
    """A gateway request ran past its one deadline (``kiln serve --timeout``), carried across
    every attempt; the attempt in flight was cancelled on its agent, not retried elsewhere."""

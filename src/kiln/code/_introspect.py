"""Remote introspection: what a node has, and names as the node sees them (seed 003).

The node side (:func:`describe`, :func:`node_report`, :func:`top_level_modules`) runs in the
agent through ``kiln.code._worker``; the driver side (:func:`inspect`, :func:`remote_module`)
asks an agent of the node. Completion in IPython (``kiln.code._ipython``) is built on these:
the names offered are the ones the remote node has, not the driver's.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect as _inspect
import logging
import os
import pkgutil
import socket
import sys
from dataclasses import dataclass, field
from typing import Any

from kiln import _display as display
from kiln._protocol import Context

log = logging.getLogger("kiln")

# --- node side -----------------------------------------------------------------------------------


def resolve(dotted: str) -> Any:
    """Import the longest importable module prefix of ``dotted`` and getattr the rest."""
    parts = dotted.split(".")
    prefixes = {".".join(parts[:j]) for j in range(1, len(parts) + 1)}
    obj: Any = None
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
            break
        except ModuleNotFoundError as err:
            if err.name not in prefixes:  # the module exists but one of its imports failed
                raise
    else:
        raise ModuleNotFoundError(f"no module named {parts[0]!r} on this node", name=parts[0])
    for j, attr in enumerate(parts[i:], start=i):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise AttributeError(f"{'.'.join(parts[:j])} has no attribute {attr!r} "
                                 "on this node") from None
    return obj


def kind_of(obj: Any) -> str:
    if _inspect.ismodule(obj):
        return "module"
    if _inspect.isclass(obj):
        return "class"
    if _inspect.isfunction(obj) or _inspect.ismethod(obj):
        return "function"
    if _inspect.isbuiltin(obj) or _inspect.isroutine(obj):
        return "builtin"
    if callable(obj):
        return "callable"
    return "data"


def signature_of(obj: Any) -> str | None:
    if not callable(obj) or _inspect.ismodule(obj):
        return None
    try:
        return str(_inspect.signature(obj))
    except (TypeError, ValueError):
        return None


def _summary(obj: Any) -> str:
    doc = _inspect.getdoc(obj) if not isinstance(obj, (int, float, str, bytes)) else None
    return (doc or "").strip().split("\n\n")[0].replace("\n", " ")[:300]


def describe(dotted: str, private: bool = False) -> dict:
    """A plain-data description of ``dotted`` as this process sees it, with its members."""
    obj = resolve(dotted)
    kind = kind_of(obj)
    members: list[dict] = []
    if kind in ("module", "class"):
        names = set(dir(obj))
        if kind == "module" and hasattr(obj, "__path__"):
            # submodules not imported yet are names too (they complete like attributes)
            names |= {m.name for m in pkgutil.iter_modules(obj.__path__)}
        for name in sorted(names):
            if name.startswith("_") and not private:
                continue
            try:
                value = getattr(obj, name)
            except Exception as err:  # noqa: BLE001 - a lazy attribute or a submodule not
                # imported can raise anything on access: still a name, listed without its value
                log.debug("%s.%s: %r", getattr(obj, "__name__", obj), name, err)
                members.append({"name": name, "kind": "module" if kind == "module" else "data",
                                "signature": None, "type": None, "doc": ""})
                continue
            members.append({"name": name, "kind": kind_of(value),
                            "signature": signature_of(value),
                            "type": f"{type(value).__module__}.{type(value).__qualname__}",
                            "doc": _summary(value)})
    module = _inspect.getmodule(obj)
    return {
        "name": dotted,
        "kind": kind,
        "type": f"{type(obj).__module__}.{type(obj).__qualname__}",
        "signature": signature_of(obj),
        "doc": _summary(obj),
        "file": getattr(module, "__file__", None),
        "members": members,
    }


def node_report(ctx: Context) -> dict[str, Any]:
    """What this node has: host, Python, installed packages, devices."""
    packages = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata.get("Name")
        if name:
            packages[name] = dist.version
    return {
        "node": ctx.node,
        "agent": ctx.name,
        "device": ctx.device,
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "cwd": os.getcwd(),
        "sys_path": list(sys.path),
        "packages": dict(sorted(packages.items(), key=lambda kv: kv[0].lower())),
        "devices": _devices(),
    }


def _devices() -> list[dict]:
    devices = []
    try:
        import jax

        for d in jax.devices():
            devices.append({"framework": "jax", "id": d.id, "platform": d.platform,
                            "kind": getattr(d, "device_kind", "")})
    except Exception as err:  # noqa: BLE001 - a node without a working jax still answers,
        # and says why in the report
        devices.append({"framework": "jax", "error": str(err)})
    if "torch" in sys.modules:  # torch is imported only where a capability needs it
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(i)
                devices.append({"framework": "torch", "id": i, "platform": "cuda",
                                "kind": props.name, "memory_gb": round(props.total_memory / 2**30, 1)})
    return devices


def top_level_modules() -> list[str]:
    """Top-level module names importable in this process."""
    names = {m.name for m in pkgutil.iter_modules()}
    names |= set(sys.builtin_module_names)
    names |= {n for n in sys.modules if "." not in n}
    return sorted(n for n in names if n.isidentifier())


def call_dotted(dotted: str, args: tuple, kwargs: dict) -> Any:
    """Run on a node: call the object named ``dotted`` (a ``remote_module`` attribute)."""
    return resolve(dotted)(*args, **kwargs)


def get_dotted(dotted: str) -> Any:
    """Run on a node: the value named ``dotted``."""
    return resolve(dotted)


# --- driver side ---------------------------------------------------------------------------------


@dataclass
class NodeReport:
    """``kiln.inspect(node)``: the node as it sees itself."""

    node: str
    state: str = "unknown"
    address: str = ""
    hostname: str = ""
    python: str = ""
    fingerprint: dict = field(default_factory=dict)
    packages: dict = field(default_factory=dict)
    devices: list = field(default_factory=list)
    models: list = field(default_factory=list)
    agents: list = field(default_factory=list)
    capabilities: dict = field(default_factory=dict)
    sys_path: list = field(default_factory=list)

    def _repr_html_(self) -> str:
        return display.node_html(self)

    def __repr__(self) -> str:
        agents = ", ".join(a.get("name", "?") for a in self.agents)
        devices = ", ".join(f"{d.get('platform')}:{d.get('id')}" for d in self.devices
                            if "error" not in d)
        return (f"NodeReport(node={self.node!r}, state={self.state!r}, host={self.hostname!r}, "
                f"python={self.python!r}, packages={len(self.packages)}, devices=[{devices}], "
                f"models={self.models!r}, agents=[{agents}])")


@dataclass
class ObjectReport:
    """``kiln.inspect(node, "pkg.mod")``: a name and its members, as the node sees them."""

    node: str
    name: str
    kind: str
    type: str = ""
    signature: str | None = None
    doc: str = ""
    file: str | None = None
    members: list = field(default_factory=list)

    def names(self) -> list[str]:
        return [m["name"] for m in self.members]

    def member(self, name: str) -> dict | None:
        return next((m for m in self.members if m["name"] == name), None)

    def __contains__(self, name: str) -> bool:
        return self.member(name) is not None

    def _repr_html_(self) -> str:
        return display.object_html(self)

    def __repr__(self) -> str:
        head = f"{self.kind} {self.name}{self.signature or ''} on node {self.node}"
        lines = [head] + [f"  {m['name']}{m['signature'] or ''}  [{m['kind']}]"
                          for m in self.members]
        return "\n".join(lines)


def inspect(node: str, dotted_name: str | None = None) -> NodeReport | ObjectReport:
    """Ask ``node`` about itself, or about ``dotted_name`` as the node sees it.

    ``kiln.inspect("gpu1")`` gives the node's fingerprint, packages, devices, loaded models and
    agents; ``kiln.inspect("gpu1", "numpyro.infer")`` the names and signatures in that module
    on gpu1 (imported there if needed).
    """
    from kiln import cluster
    from kiln.code._call import agents_for

    c = cluster.current()
    handles = agents_for(c, node)
    h = handles[0]
    if dotted_name:
        described = h.invoke("code", "inspect", {"name": dotted_name})
        return ObjectReport(node=h.node, **described)
    seen = h.invoke("code", "inspect", {"name": None})
    report = NodeReport(node=h.node, hostname=seen["hostname"], python=seen["python"],
                        packages=seen["packages"], devices=seen["devices"],
                        sys_path=seen["sys_path"])
    for n in c.nodes():
        if n.name == h.node:
            report.state = str(getattr(n, "state", "unknown"))
            report.address = str(getattr(n, "address", ""))
            report.fingerprint = dict(getattr(n, "fingerprint", None) or {})
    for a in handles:
        info = a.info() or {}
        capabilities = _capabilities(info)
        report.agents.append({"name": a.name, "device": a.device,
                              "capabilities": sorted(capabilities)})
        report.capabilities[a.name] = capabilities
        report.models += [m for m in _models(capabilities) if m not in report.models]
        if not report.fingerprint and isinstance(info.get("fingerprint"), dict):
            report.fingerprint = dict(info["fingerprint"])
    return report


def _capabilities(info: dict) -> dict:
    """Per-capability info dicts inside an agent's info (``{"capabilities": {...}}`` or flat)."""
    nested = info.get("capabilities")
    if isinstance(nested, dict):
        return {k: v for k, v in nested.items() if isinstance(v, dict)}
    return {k: v for k, v in info.items() if k in ("bayes", "embed", "code") and isinstance(v, dict)}


_MODEL_KEYS = ("models", "loaded_models", "loaded", "programs", "compiled", "cached_programs")


def _models(capabilities: dict) -> list[str]:
    """Names of what capabilities hold loaded (encoders, compiled programs)."""
    found: list[str] = []
    for cap, info in capabilities.items():
        for key in _MODEL_KEYS:
            value = info.get(key)
            if isinstance(value, dict):
                found += [f"{cap}:{k}" for k in value]
            elif isinstance(value, int) and not isinstance(value, bool) and value > 0:
                found.append(f"{cap}:{key}={value}")  # a count (compiled programs)
            elif isinstance(value, (list, tuple, set)):
                for v in value:
                    name = v.get("name", v) if isinstance(v, dict) else v
                    found.append(f"{cap}:{name}")
    return found


class RemoteModule:
    """``kiln.remote_module(node, "pkg.mod")``: a module whose attributes come from the node.

    ``dir()`` lists the names the node has (this drives IPython completion); a submodule is
    another proxy, a callable runs on the node when called, data is fetched from the node.
    """

    def __init__(self, node: str, name: str, report: ObjectReport | None = None) -> None:
        object.__setattr__(self, "_kiln_node", node)
        object.__setattr__(self, "_kiln_name", name)
        object.__setattr__(self, "_kiln_report", report)

    def _kiln_describe(self, refresh: bool = False) -> ObjectReport:
        if refresh or self._kiln_report is None:
            report = inspect(self._kiln_node, self._kiln_name)
            object.__setattr__(self, "_kiln_report", report)
        return self._kiln_report

    def __dir__(self) -> list[str]:
        return self._kiln_describe().names()

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") or attr.startswith("_kiln"):
            raise AttributeError(attr)
        member = self._kiln_describe().member(attr)
        if member is None:  # the node may have gained the name since we asked
            member = self._kiln_describe(refresh=True).member(attr)
        if member is None:
            raise AttributeError(f"module {self._kiln_name!r} on node {self._kiln_node} "
                                 f"has no attribute {attr!r}")
        dotted = f"{self._kiln_name}.{attr}"
        if member["kind"] == "module":
            return RemoteModule(self._kiln_node, dotted)
        if member["kind"] == "data":
            from kiln.code._call import call

            return call(self._kiln_node, get_dotted, dotted)
        return RemoteObject(self._kiln_node, dotted, member)

    def __setattr__(self, attr: str, value: Any) -> None:
        raise AttributeError(f"remote module {self._kiln_name!r} is read-only here; change it "
                             "on the node with kiln.call")

    def __repr__(self) -> str:
        return f"<remote module {self._kiln_name!r} on node {self._kiln_node}>"

    def _repr_html_(self) -> str:
        return display.object_html(self._kiln_describe())


class RemoteObject:
    """A callable on a node (function or class); calling it runs it there."""

    def __init__(self, node: str, name: str, member: dict) -> None:
        self.node = node
        self.name = name
        self.kind = member["kind"]
        self.signature = member.get("signature")
        self.__doc__ = member.get("doc") or None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from kiln.code._call import call

        return call(self.node, call_dotted, self.name, args, kwargs)

    def get(self) -> Any:
        """The object itself, fetched from the node (it must be picklable)."""
        from kiln.code._call import call

        return call(self.node, get_dotted, self.name)

    def __repr__(self) -> str:
        return f"<remote {self.kind} {self.name}{self.signature or ''} on node {self.node}>"


def remote_module(node: str, name: str) -> RemoteModule:
    """A proxy for module ``name`` as ``node`` has it; see :class:`RemoteModule`."""
    return RemoteModule(node, name, inspect(node, name))

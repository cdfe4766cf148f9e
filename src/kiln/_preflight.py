"""Fingerprints and the checks an agent runs before it accepts work (seed 000's fixes 1-4).

Every fix in the seed was a boundary that broke silently: a stale build, a runtime ABI that
differed between nodes, a node with no name. Each becomes an explicit check here, run when an
agent starts; a failed check raises a typed error whose message says what and how to fix it.
"""

from __future__ import annotations

import hashlib
import platform
import socket
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from kiln.errors import DeviceInitError, FingerprintMismatchError, UnnamedNodeError

OVERRIDE_ENV = "KILN_FINGERPRINT_OVERRIDE"

# A node's kiln name travels as a Ray custom resource ``kiln-node:<name>`` (``kiln join --name``
# sets it) or a node label: the named-node check reads it here, the cluster layer writes it.
NODE_RESOURCE = "kiln-node:"
NODE_LABEL = "kiln-node"


def node_name_of(ray_node: dict[str, Any] | None) -> str | None:
    """The kiln name a Ray node record (``ray.nodes()``) carries, or None."""
    if not ray_node:
        return None
    for key in (ray_node.get("Resources") or {}):
        if key.startswith(NODE_RESOURCE):
            return key[len(NODE_RESOURCE):]
    return (ray_node.get("Labels") or {}).get(NODE_LABEL)

# Keys whose difference breaks a cluster: compiled programs, pickled code or results would not
# mean the same thing on both sides.
BREAKING_KEYS = (
    "python", "kiln", "kiln_source", "jax", "jaxlib", "jax_cuda_plugin", "numpyro", "blackjax",
    "torch", "cuda_driver", "cuda_runtime",
)
# Keys that exist only where a GPU stack is installed: a driver on a laptop has none of them and
# must still be able to drive GPU nodes, so they are compared only when both sides have them.
GPU_ONLY_KEYS = frozenset({"jax_cuda_plugin", "cuda_driver", "cuda_runtime"})

_CUDA_PLUGINS = ("jax-cuda13-plugin", "jax-cuda12-plugin")
_CUDA_RUNTIMES = ("nvidia-cuda-runtime", "nvidia-cuda-runtime-cu13", "nvidia-cuda-runtime-cu12")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _first_version(dists: tuple[str, ...]) -> str | None:
    for dist in dists:
        found = _version(dist)
        if found:
            return found
    return None


def _public(version: str | None) -> str | None:
    # torch's "+cpu"/"+cu130" local part names the build, not the API: a CPU driver drives CUDA nodes.
    return version.split("+", 1)[0] if version else None


def _cuda_driver() -> str | None:
    path = Path("/proc/driver/nvidia/version")
    if not path.exists():
        return None
    for word in path.read_text(errors="replace").split():
        if word.count(".") >= 1 and word.replace(".", "").isdigit():
            return word
    return None


def source_hash() -> str:
    """sha256 over kiln's own source files: differs whenever any node runs other kiln code."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def fingerprint() -> dict[str, Any]:
    """This process's fingerprint: what must match across the cluster, plus facts for display."""
    from kiln import __version__

    fp: dict[str, Any] = {
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "kiln": __version__,
        "kiln_source": source_hash(),
        "jax": _version("jax"),
        "jaxlib": _version("jaxlib"),
        "jax_cuda_plugin": _first_version(_CUDA_PLUGINS),
        "numpyro": _version("numpyro"),
        "blackjax": _version("blackjax"),
        "torch": _public(_version("torch")),
        "cuda_driver": _cuda_driver(),
        "cuda_runtime": _first_version(_CUDA_RUNTIMES),
        # Shown, not compared: Ray itself refuses mismatched Ray versions at connect.
        "ray": _version("ray"),
        "numpy": _version("numpy"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
    }
    from kiln._settings import settings

    override = settings().fingerprint_override
    if override:
        fp.update(override)
    return fp


def differences(driver: dict[str, Any], node: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The breaking keys on which two fingerprints differ, as {key: (driver value, node value)}."""
    diff = {}
    for key in BREAKING_KEYS:
        mine, theirs = driver.get(key), node.get(key)
        if key in GPU_ONLY_KEYS and (mine is None or theirs is None):
            continue
        if mine != theirs:
            diff[key] = (mine, theirs)
    return diff


def check_named_node(node_name: str | None, *, agent: str | None = None) -> None:
    """Fix 4: an agent works only on a node that carries a kiln name in a connected cluster."""
    if not node_name:
        raise UnnamedNodeError(
            "this node carries no kiln name, so no work can be addressed to it. "
            "Start it with `kiln join HEAD_ADDRESS --name NAME` (or `kiln up` for a head).",
            agent=agent,
        )


def check_fingerprint(driver: dict[str, Any], node: dict[str, Any], *, node_name: str,
                      agent: str | None = None) -> None:
    """Fixes 1-3: refuse when the node's code or runtime differs from the driver's."""
    diff = differences(driver, node)
    if diff:
        raise FingerprintMismatchError(diff, node=node_name, agent=agent)


def check_device(device: str, *, node_name: str, agent: str | None = None) -> str:
    """Run a small jax computation on the agent's device; return the device's description."""
    try:
        import jax
        import jax.numpy as jnp

        backend = "gpu" if device.startswith("cuda") else "cpu"
        devices = jax.devices(backend)
        index = int(device.split(":", 1)[1]) if ":" in device and backend == "gpu" else 0
        target = devices[min(index, len(devices) - 1)]
        x = jax.device_put(jnp.arange(8.0), target)
        value = float(jax.jit(lambda v: (v * v).sum())(x))
        if value != 140.0:
            raise RuntimeError(f"a test computation returned {value}, expected 140.0")
        return str(target)
    except Exception as err:
        raise DeviceInitError(
            f"device {device} did not initialise: {type(err).__name__}: {err}. "
            "Check the GPU driver and that jax's CUDA plugin matches it (pip install 'jax[cuda]'), "
            "and that JAX_PLATFORMS does not exclude the device.",
            node=node_name, agent=agent,
        ) from err

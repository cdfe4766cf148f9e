"""Real Ray clusters for the tests: the embedded default and a simulated 3-node cluster.

One process can be connected to one Ray cluster at a time, so the fixtures share one slot:
asking for the other kind tears the current one down first, and tests are ordered so that
those using the same kind run together (the suite starts Ray only a few times).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO = Path(__file__).resolve().parents[1]
POSTERIORDB = Path(os.environ.get("KILN_POSTERIORDB", REPO / "tests" / "data" / "posteriordb"))


@dataclass
class ThreeNodes:
    """A ``ray.cluster_utils.Cluster`` of nodes n1 (head), n2, n3, connected with kiln."""

    ray_cluster: object
    kiln: object
    nodes: dict = field(default_factory=dict)
    dirty: bool = False

    def remove(self, name: str) -> None:
        """Remove node ``name`` for real (its raylet and workers die)."""
        node = self.nodes.pop(name)
        self.dirty = True
        self.ray_cluster.remove_node(node, allow_graceful=False)

    def add(self, name: str) -> None:
        """Add a named node while connected (it gets agents on the next refresh)."""
        from kiln.cluster import NODE_RESOURCE

        self.dirty = True
        self.nodes[name] = self.ray_cluster.add_node(num_cpus=1, resources={NODE_RESOURCE + name: 1})
        self.ray_cluster.wait_for_nodes()


class _Slot:
    kind: str | None = None
    value: object = None

    def release(self) -> None:
        import kiln

        kiln.shutdown()
        if isinstance(self.value, ThreeNodes):
            self.value.ray_cluster.shutdown()
        self.kind, self.value = None, None


_slot = _Slot()


def _start_three_nodes() -> ThreeNodes:
    from ray.cluster_utils import Cluster

    import kiln
    from kiln.cluster import NODE_RESOURCE

    rc = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {NODE_RESOURCE + "n1": 1}, "include_dashboard": False})
    nodes = {"n1": rc.head_node}
    for name in ("n2", "n3"):
        nodes[name] = rc.add_node(num_cpus=1, resources={NODE_RESOURCE + name: 1})
    rc.wait_for_nodes()
    cluster = kiln.connect(rc.address)
    return ThreeNodes(ray_cluster=rc, kiln=cluster, nodes=nodes)


@pytest.fixture
def embedded():
    """``kiln.connect()``: the embedded default, one CPU agent on the node named "local"."""
    import kiln

    if _slot.kind != "embedded":
        _slot.release()
        _slot.value = kiln.connect(name="local")
        _slot.kind = "embedded"
    return _slot.value


@pytest.fixture
def three_nodes():
    """A simulated 3-node cluster (n1, n2, n3), one CPU agent each; fresh after a node change."""
    if _slot.kind != "three" or _slot.value.dirty:
        _slot.release()
        _slot.value = _start_three_nodes()
        _slot.kind = "three"
    return _slot.value


@pytest.fixture
def no_cluster():
    """No kiln cluster connected in this process."""
    _slot.release()
    return None


def pytest_collection_modifyitems(config, items):
    # Group tests by the cluster they need, so Ray starts as few times as possible.
    def rank(item):
        names = getattr(item, "fixturenames", ())
        if "no_cluster" in names:
            return 0
        if "embedded" in names:
            return 1
        if "three_nodes" in names:
            return 3
        return 2

    items.sort(key=rank)


def pytest_sessionfinish(session, exitstatus):
    _slot.release()


# -- real hosts: network namespaces (tests/netns.py) ----------------------------------------------
# Kept apart from the fixtures above: these run the CLI and drivers in other processes, on hosts
# of their own, and never touch this process's Ray.
@pytest.fixture(scope="session")
def netns_hosts():
    """h1..h4 as network namespaces on a bridge (10.77.0.1-4); everything on them is killed and
    the namespaces deleted at the end of the session, whatever happened (one set of hosts
    for tests/test_netns_*.py: starting the cluster costs a minute on 2 cores)."""
    from netns import Hosts, unavailable

    why = unavailable()
    if why:
        # A machine that cannot make hosts must not pass the host tests by skipping them.
        pytest.fail(f"no network namespaces here: {why}. These tests need root and iproute2's "
                    "`ip netns` (as on kiln's dev and CI machines); bench/netns.sh runs them by "
                    "hand elsewhere.", pytrace=False)
    hosts = Hosts()
    try:
        hosts.up()
        yield hosts
    finally:
        hosts.down()


@pytest.fixture(scope="session")
def netns_cluster(netns_hosts):
    """The README's cluster on the hosts: `kiln up --host 10.77.0.1 --name head1` on h1, `kiln
    join 10.77.0.1:6379 --name gpu2` on h2 and `... --name gpu3` on h3; h4 drives."""
    from netns import NetnsCluster

    return NetnsCluster(netns_hosts).start()

"""Agents check every boundary at start and refuse with a clear reason (seed 000's fixes 1-4)."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

import kiln
from kiln import _preflight as preflight
from kiln.errors import NoAgentsError, UnknownNodeError


def test_fingerprint_differences_name_each_key_with_both_values():
    driver = preflight.fingerprint()
    node = {**driver, "numpyro": "0.0.1", "python": "3.9"}
    diff = preflight.differences(driver, node)
    assert diff == {"numpyro": (driver["numpyro"], "0.0.1"), "python": (driver["python"], "3.9")}


def test_gpu_only_keys_are_compared_only_when_both_sides_have_them():
    driver = {**preflight.fingerprint(), "cuda_driver": None}
    node = {**driver, "cuda_driver": "580.1"}
    assert preflight.differences(driver, node) == {}
    assert "cuda_driver" in preflight.differences({**driver, "cuda_driver": "570.0"}, node)


def _source_hash_of(copy: Path) -> str:
    # _preflight.py loaded from the copy hashes the copy: the tree its own file sits in
    spec = importlib.util.spec_from_file_location("kiln_copy_preflight", copy / "_preflight.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.source_hash()


def test_the_source_hash_changes_with_kiln_source(tmp_path):
    copy = tmp_path / "kiln"
    shutil.copytree(Path(preflight.__file__).parent, copy,
                    ignore=shutil.ignore_patterns("__pycache__"))
    before = _source_hash_of(copy)
    assert len(before) == 16 and before == preflight.source_hash()   # same code, same hash
    engine = copy / "bayes" / "_engine.py"
    engine.write_text(engine.read_text() + "\n# one more line\n")
    after = _source_hash_of(copy)
    assert after != before
    engine.write_text(engine.read_text().removesuffix("\n# one more line\n"))
    assert _source_hash_of(copy) == before
    (copy / "new_module.py").write_text("")                          # a new file counts too
    assert _source_hash_of(copy) != before


def _refused(cluster, env):
    node = cluster.nodes()[0]
    rec = cluster.start_agent(node.node_id, "cpu", env=env, replace=True)
    return node, rec


def test_an_agent_with_another_fingerprint_refuses_to_start_and_gets_no_work(embedded):
    node, rec = _refused(embedded, {preflight.OVERRIDE_ENV: json.dumps({"numpyro": "0.0.1-stale"})})
    try:
        assert rec.state == "refused" and rec.check == "fingerprint"
        assert "numpyro" in rec.reason and "0.0.1-stale" in rec.reason
        assert "Install the same versions" in rec.reason
        with pytest.raises(NoAgentsError, match="0.0.1-stale"):
            embedded.agents(on=node.name)
        assert [n.state for n in embedded.nodes()] == ["refused"]
    finally:
        embedded.start_agent(node.node_id, "cpu", replace=True)
    assert embedded.agents(on=node.name)[0].info()["state"] == "ready"


def test_an_agent_whose_device_does_not_initialise_refuses_to_start(embedded):
    node, rec = _refused(embedded, {"JAX_PLATFORMS": "cuda"})
    try:
        assert rec.state == "refused" and rec.check == "device"
        assert "did not initialise" in rec.reason and "cpu" in rec.reason
        with pytest.raises(NoAgentsError):
            embedded.agents(on=node.name)
    finally:
        embedded.start_agent(node.node_id, "cpu", replace=True)


def test_an_unnamed_node_gets_an_agent_that_refuses_with_the_fix(three_nodes):
    three_nodes.dirty = True
    three_nodes.ray_cluster.add_node(num_cpus=1)
    three_nodes.ray_cluster.wait_for_nodes()
    three_nodes.kiln.refresh()
    unnamed = [n for n in three_nodes.kiln.nodes() if n.name.startswith("unnamed-")]
    assert len(unnamed) == 1
    assert unnamed[0].state == "refused"
    assert "kiln join" in unnamed[0].reason and "no kiln name" in unnamed[0].reason
    assert sorted(h.node for h in three_nodes.kiln.agents()) == ["n1", "n2", "n3"]


def test_an_unknown_node_fails_at_once_listing_the_known_ones(three_nodes):
    with pytest.raises(UnknownNodeError) as err:
        three_nodes.kiln.agents(on="gpu9")
    assert "gpu9" in str(err.value)
    for name in ("n1", "n2", "n3"):
        assert name in err.value.known


def test_connect_without_address_names_the_local_node_and_starts_one_cpu_agent(embedded):
    nodes = embedded.nodes()
    assert [n.name for n in nodes] == ["local"]
    assert [(a.device, a.state) for a in nodes[0].agents] == [("cpu", "ready")]
    assert nodes[0].fingerprint["kiln_source"] == preflight.fingerprint()["kiln_source"]
    assert kiln.current() is embedded

"""kiln.call / kiln.map on a simulated 3-node cluster: placement, node loss, elastic nodes."""

import os
import threading
import time

import pytest

import kiln
from kiln.code import current_node, shipments


def where_am_i(_):
    return current_node()


def test_call_runs_on_the_named_node(three_nodes):
    assert [kiln.call(n, where_am_i, None) for n in ("n1", "n2", "n3")] == ["n1", "n2", "n3"]
    assert kiln.call("n3/cpu", where_am_i, None) == "n3"


def test_map_spreads_over_every_node_and_ships_the_code_once_per_agent(three_nodes):
    def square_where(i):
        return i * i, current_node()

    before = shipments().by_agent
    out = kiln.map(square_where, range(60), chunksize=2)
    assert [v for v, _ in out] == [i * i for i in range(60)]
    assert {n for _, n in out} == {"n1", "n2", "n3"}
    after = shipments().by_agent
    assert all(after.get(a, 0) - before.get(a, 0) == 1
               for a in ("kiln-agent:n1:cpu", "kiln-agent:n2:cpu", "kiln-agent:n3:cpu"))


def _done(directory):
    ran = {}
    for name in os.listdir(directory):
        if name.startswith("done-"):
            _, item, node = name.split("-", 2)
            ran.setdefault(int(item), []).append(node)
    return ran


@pytest.mark.slow
def test_map_over_200_items_survives_a_node_removed_half_way(three_nodes, tmp_path):
    def work(i, marks):
        # all simulated nodes share this machine's disk: marks say who ran what
        node = current_node()
        if node == "n2" and os.path.exists(os.path.join(marks, "halfway")):
            open(os.path.join(marks, f"hang-{i}"), "w").close()
            time.sleep(600)  # n2 is stuck on this chunk when it is removed
        time.sleep(0.02)
        open(os.path.join(marks, f"done-{i}-{node}"), "w").close()
        return i * i

    outcome = {}

    def run():
        try:
            outcome["results"] = kiln.map(work, [(i, str(tmp_path)) for i in range(200)],
                                          chunksize=5)
        except BaseException as err:  # re-raised below, in the test's thread
            outcome["error"] = err

    def wait_for(condition):
        deadline = time.monotonic() + 120
        while not condition() and mapper.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert condition(), "the map did not get half way"

    mapper = threading.Thread(target=run)
    mapper.start()
    wait_for(lambda: len(_done(tmp_path)) >= 100)
    (tmp_path / "halfway").touch()
    wait_for(lambda: any(n.startswith("hang-") for n in os.listdir(tmp_path)))
    three_nodes.remove("n2")
    mapper.join(timeout=180)
    assert not mapper.is_alive()
    if "error" in outcome:
        raise outcome["error"]
    results = outcome["results"]
    assert results == [i * i for i in range(200)]  # 200, in order, none lost or duplicated
    done = _done(tmp_path)
    assert set(done) == set(range(200))
    assert any("n2" in nodes for nodes in done.values())  # n2 worked before it left
    stuck = [int(n.split("-")[1]) for n in os.listdir(tmp_path) if n.startswith("hang-")]
    assert all("n2" not in done[i] for i in stuck)  # its unfinished items re-ran elsewhere


@pytest.mark.slow
def test_a_node_that_joins_gets_work_from_the_next_map_and_one_that_leaves_none(three_nodes):
    three_nodes.add("n4")
    placed = kiln.map(where_am_i, range(40), chunksize=1)  # refresh() starts n4's agent
    assert set(placed) == {"n1", "n2", "n3", "n4"}
    assert "n4" in [n.name for n in three_nodes.kiln.nodes() if n.state == "ready"]

    # n4 leaves the way `kiln down` does (a graceful stop); test_map_... covers a crash
    three_nodes.dirty = True
    three_nodes.ray_cluster.remove_node(three_nodes.nodes.pop("n4"), allow_graceful=True)
    # gone once the engine says so (its orphaned worker may answer a moment longer)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and any(
            n.name == "n4" and n.state != "dead" for n in three_nodes.kiln.nodes()):
        time.sleep(0.2)
    placed = kiln.map(where_am_i, range(40), chunksize=1)
    assert len(placed) == 40
    assert set(placed) == {"n1", "n2", "n3"}

"""The job runner and the agent under it: real cancels, hostile code, bounded state.

Everything runs on the embedded default (a real local Ray and a real agent process); the
faults are real: the shipped functions spin, call ``sys.exit``, ``os.abort()`` and
``os._exit``, and the agent process really dies and is restarted by Ray.
"""

from __future__ import annotations

import _thread
import os
import sys
import threading
import time

import psutil
import pytest

import kiln
from kiln.errors import AgentLostError, CallTimeoutError, PoisonJobError, RemoteError


def spin(seconds):
    """Pure Python work that checks nothing: only a hard cancel stops it early."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


def waits_forever():
    """A call that never returns, mostly waiting (on a lock, a socket, a sleep)."""
    while True:
        time.sleep(0.05)


def agent_jobs(cluster):
    return cluster.agents()[0].info(timeout=60)["jobs"]


def wait_until(predicate, timeout=30.0, every=0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


def test_a_call_past_its_timeout_stops_on_the_agent_and_frees_it(embedded):
    before = agent_jobs(embedded)["cancelled"]
    t0 = time.monotonic()
    with pytest.raises(CallTimeoutError, match="ran past its timeout of 1.0 s"):
        kiln.call("local", spin, 600, timeout=1.0)
    assert time.monotonic() - t0 < 10
    # the spinning function is stopped inside the agent, not left to run its 600 s
    assert wait_until(lambda: agent_jobs(embedded)["running"] == 0, timeout=10)
    jobs = agent_jobs(embedded)
    assert jobs["cancelled"] == before + 1
    assert jobs["last_cancel_s"] < 5
    assert kiln.call("local", spin, 0.01) > 0


def test_sixty_four_calls_that_time_out_do_not_wedge_the_agent(embedded):
    pid = embedded.agents()[0].info()["pid"]
    errors = []

    def one():
        try:
            kiln.call("local", waits_forever, timeout=2.0)
        except CallTimeoutError as err:
            errors.append(err)

    threads = [threading.Thread(target=one) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(errors) == 64
    assert wait_until(lambda: agent_jobs(embedded)["running"] == 0, timeout=60)
    t0 = time.monotonic()
    kiln.connect()                      # what hung for 180 s before
    assert kiln.call("local", spin, 0.01) > 0
    assert time.monotonic() - t0 < 15
    assert embedded.agents()[0].info()["pid"] == pid   # stopped, not restarted


def test_a_stop_in_the_notebook_cancels_the_running_call(embedded):
    kiln.call("local", spin, 0)          # the code is on the agent: the stop meets it running
    before = agent_jobs(embedded)["cancelled"]
    threading.Timer(1.0, _thread.interrupt_main).start()   # what Jupyter's stop button does
    with pytest.raises(KeyboardInterrupt):
        kiln.call("local", spin, 600)
    assert wait_until(lambda: agent_jobs(embedded)["running"] == 0, timeout=10)
    assert agent_jobs(embedded)["cancelled"] == before + 1


def exits(code):
    sys.exit(code)


def test_sys_exit_in_shipped_code_is_that_calls_error_not_a_dead_agent(embedded):
    pid = embedded.agents()[0].info()["pid"]
    with pytest.raises(RemoteError, match=r"sys.exit\(3\)"):
        kiln.call("local", exits, 3)
    assert embedded.agents()[0].info()["pid"] == pid
    assert kiln.call("local", spin, 0.01) > 0


def aborts():
    os.abort()


def hard_exits():
    os._exit(3)


@pytest.mark.slow
def test_code_that_aborts_restarts_the_agent_and_the_error_names_the_signal(embedded):
    pid = embedded.agents()[0].info()["pid"]
    with pytest.raises(AgentLostError, match="SIGABRT") as lost:
        kiln.call("local", aborts)
    assert lost.value.node == "local"
    # Ray restarts the agent in place; the next call works without refresh() by hand
    assert kiln.call("local", spin, 0.01) > 0
    assert embedded.agents()[0].info()["pid"] != pid


@pytest.mark.slow
def test_code_that_calls_os_exit_is_named_too(embedded):
    with pytest.raises(AgentLostError, match=r"os._exit\(3\)"):
        kiln.call("local", hard_exits)
    assert kiln.call("local", spin, 0.01) > 0


def abort_on_three(i):
    if i == 3:
        os.abort()
    return i


@pytest.mark.slow
def test_a_map_item_that_kills_its_agent_twice_is_a_poison_job(embedded, tmp_path):
    pid = embedded.agents()[0].info()["pid"]
    t0 = time.monotonic()
    with pytest.raises(PoisonJobError, match=r"item 3 killed the agent it ran on 2 times") as err:
        kiln.map(abort_on_three, range(8), nodes="all", chunksize=1)
    assert "SIGABRT" in str(err.value)
    assert time.monotonic() - t0 < 120
    # it stopped there: the agent died twice (not 36 times), and it serves again
    assert kiln.call("local", spin, 0.01) > 0
    assert embedded.agents()[0].info()["pid"] != pid


def test_a_thousand_calls_leave_the_agents_maps_empty_and_its_memory_flat(embedded):
    h = embedded.agents()[0]
    deadline = time.monotonic() + 300
    while h.info(timeout=60)["rewarming"] and time.monotonic() < deadline:
        time.sleep(0.5)  # an agent restarted by an earlier test is still re-importing
    agent = psutil.Process(h.info()["pid"])
    for _ in range(200):
        kiln.call("local", spin, 0)
    rss_200 = agent.memory_info().rss
    for _ in range(800):
        kiln.call("local", spin, 0)
    grown = agent.memory_info().rss - rss_200
    jobs = h.info()["jobs"]
    assert jobs["running"] == 0 and jobs["progress_keys"] == 0
    assert grown < 20 * 2**20, f"the agent grew {grown / 2**20:.1f} MiB over 800 calls"


def test_the_cluster_object_is_safe_from_several_threads(embedded):
    failures = []
    stop = threading.Event()

    def refresher():
        while not stop.is_set():
            try:
                embedded.refresh()
            except Exception as err:  # noqa: BLE001 - collected and asserted below
                failures.append(err)

    def reader():
        for _ in range(200):
            try:
                assert embedded.agents() and embedded.nodes() and embedded.node_names()
            except Exception as err:  # noqa: BLE001 - collected and asserted below
                failures.append(err)

    r = threading.Thread(target=refresher)
    r.start()
    readers = [threading.Thread(target=reader) for _ in range(4)]
    for t in readers:
        t.start()
    for t in readers:
        t.join(120)
    stop.set()
    r.join(60)
    assert failures == []


def hoard(step_mb):
    kept = []
    while True:                      # allocates without bound
        kept.append(bytearray(step_mb * 2**20))
        time.sleep(0.005)


@pytest.mark.slow
def test_code_that_allocates_without_bound_is_stopped_and_the_agent_survives(no_cluster):
    cluster = kiln.connect(name="local", agent_env={"KILN_AGENT_MEMORY_LIMIT_MB": "1500"})
    try:
        pid = cluster.agents()[0].info()["pid"]
        with pytest.raises(MemoryError, match="memory passed the agent's limit") as err:
            kiln.call("local", hoard, 20)
        assert "local" in "".join(getattr(err.value, "__notes__", []))
        info = cluster.agents()[0].info()
        assert info["pid"] == pid and info["memory"]["jobs_stopped"] >= 1
        assert info["memory"]["rss_bytes"] < 1500 * 2**20   # what it took was given back
        assert kiln.call("local", spin, 0.01) > 0
    finally:
        kiln.shutdown()

"""One cluster, many users: notebooks, scripts and a gateway share the same agents.

The other drivers are real processes attached to the same Ray cluster; one shuts down
politely, one is SIGKILLed mid-call, while this process keeps using the agents and a real
gateway serves HTTP from them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

import kiln
from kiln.bayes import HalfNormal, Model, Normal
from kiln.code import current_node
from kiln.serve._app import create_app
from kiln.serve._server import BackgroundServer

DRIVER = """
import sys, time
import kiln
from kiln.code import current_node

def where(_):
    return current_node()

c = kiln.connect(sys.argv[1])
print("ran on", kiln.call("n2", where, 0), flush=True)
if sys.argv[2] == "shutdown":
    kiln.shutdown()
    print("disconnected", flush=True)
else:
    print("calling", flush=True)
    kiln.call("n3", time.sleep, 60)
"""


def where(_):
    return current_node()


def agent_pids(cluster):
    return {h.name: h.info()["pid"] for h in cluster.agents()}


def start_driver(address, mode):
    return subprocess.Popen([sys.executable, "-c", DRIVER, address, mode], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def read_until(proc, word, timeout=180):
    end = time.monotonic() + timeout
    seen = []
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if word in line:
            return "".join(seen)
    raise AssertionError(f"the driver never printed {word!r}:\n{''.join(seen)}")


@pytest.mark.slow
@pytest.mark.multinode
def test_another_drivers_shutdown_or_crash_leaves_the_agents_to_everyone(three_nodes):
    c = three_nodes.kiln
    pids = agent_pids(c)
    assert len(pids) == 3
    for n in ("n1", "n2", "n3"):
        kiln.embed(["warm"], on=n)           # every agent has its encoder loaded
    app = create_app(c, strategy="round_robin", refresh_s=1.0, timeout=60, fallback=False)
    served, failed = [], []
    stop = threading.Event()

    def load():
        with httpx.Client(base_url=server.url, timeout=60) as client:
            while not stop.is_set():
                r = client.post("/infer", json={"texts": [f"text {len(served)}"]})
                (served if r.status_code == 200 else failed).append(r)

    with BackgroundServer(app) as server:
        loader = threading.Thread(target=load)
        loader.start()
        polite = start_driver(c.address, "shutdown")
        read_until(polite, "disconnected")
        assert polite.wait(60) == 0
        crasher = start_driver(c.address, "hang")
        read_until(crasher, "calling")
        time.sleep(1.0)
        os.kill(crasher.pid, signal.SIGKILL)   # a notebook kernel that dies mid-call
        crasher.wait(30)
        after_crash = len(served) + 20
        end = time.monotonic() + 120
        while len(served) < after_crash and time.monotonic() < end and not failed:
            time.sleep(0.1)
        stop.set()
        loader.join(120)
    # the same agent processes serve this driver and served the gateway all along
    assert agent_pids(c) == pids
    assert [kiln.call(n, where, 0) for n in ("n1", "n2", "n3")] == ["n1", "n2", "n3"]
    assert failed == [] and len(served) >= after_crash
    assert {r.json()["node"] for r in served} <= {"n1", "n2", "n3"}


def shifted_model(shift: float) -> Model:
    y = np.array([2.1, 2.5, 1.8, 2.3, 2.7, 1.9, 2.4, 2.2, 2.6, 2.0]) + shift
    return (Model().rv("mu", Normal(0.0, 10.0)).rv("sigma", HalfNormal(2.0))
            .rv("y", Normal("mu", "sigma")).obs("y_obs", "y", y))


@pytest.mark.slow
def test_eight_samplers_and_a_gateway_at_once_each_get_their_own_result(embedded):
    def run(k):
        return kiln.sample(shifted_model(k), chains=2, warmup=200, draws=200, seed=k,
                           progress=False)

    alone = {k: run(k)["mu"] for k in range(8)}
    together: dict[int, np.ndarray] = {}
    errors = []

    def one(k):
        try:
            together[k] = run(k)["mu"]
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    app = create_app(embedded, refresh_s=1.0, timeout=60, fallback=False)
    codes = []
    with BackgroundServer(app) as server:
        threads = [threading.Thread(target=one, args=(k,)) for k in range(8)]
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                codes.append(client.post("/infer", json={"texts": ["load"]}).status_code)
        for t in threads:
            t.join(300)
    assert errors == []
    # each sampler got exactly the draws it gets alone: nothing mixed between callers
    for k in range(8):
        np.testing.assert_array_equal(together[k], alone[k])
    assert len({round(float(alone[k].mean())) for k in range(8)}) == 8
    assert codes and set(codes) == {200}


def test_a_cluster_whose_agents_all_refused_fails_at_once_naming_why(no_cluster):
    import json

    from kiln.errors import NoAgentsError

    refused = {"KILN_FINGERPRINT_OVERRIDE": json.dumps({"jax": "0.0.0"})}
    cluster = kiln.connect(name="local", agent_env=refused)
    try:
        started = time.monotonic()
        with pytest.raises(NoAgentsError, match=r"differs from the driver's on jax"):
            cluster.agents()
        with pytest.raises(NoAgentsError, match=r"kiln-agent:local:cpu: refused"):
            kiln.map(abs, [-1, -2])
        # at once: looking again cannot make a refused agent start (it used to wait up to 60 s)
        assert time.monotonic() - started < 10
    finally:
        kiln.shutdown()

"""A simulated 3-node cluster behind the gateway: cache locality, and a node lost under load."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from kiln.serve._app import create_app
from kiln.serve._server import BackgroundServer


def metric(client: httpx.Client, name: str) -> float:
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.slow
def test_consistent_hashing_keeps_a_text_on_one_agent(three_nodes):
    with BackgroundServer(create_app(three_nodes.kiln, strategy="consistent_hash")) as server:
        client = httpx.Client(base_url=server.url, timeout=120)
        assert client.get("/healthz").json()["agents_ready"] == 3
        owners = {}
        for i in range(12):
            text = f"where does text {i} live?"
            first = client.post("/infer", json={"texts": [text]}).json()
            again = client.post("/infer", json={"texts": [text]}).json()
            assert again["node"] == first["node"] and again["cached"] == 1
            owners[text] = first["node"]
        assert len(set(owners.values())) >= 2
        spread = client.post("/infer", json={"texts": list(owners)}).json()
        assert spread["cached"] == 12
        assert set(spread["node"].split(",")) == set(owners.values())
        parallel = client.post("/infer/parallel", json={"texts": list(owners)}).json()
        assert parallel["nodes_used"] == 3
        # ?strategy= on /infer/parallel: round-robin chunks land on other agents' caches,
        # consistent hashing sends each text to its owner (the cache hit proves it)
        hashed = client.post("/infer/parallel?strategy=consistent_hash",
                             json={"texts": list(owners)}).json()
        assert hashed["cached"] == 12 and set(hashed["nodes"]) == set(owners.values())
        fresh = [f"never seen {i}" for i in range(12)]
        rr = client.post("/infer/parallel?strategy=round_robin", json={"texts": fresh}).json()
        again = client.post("/infer/parallel?strategy=consistent_hash", json={"texts": fresh}).json()
        assert rr["cached"] == 0 and again["cached"] < 12


@pytest.mark.slow
def test_a_node_removed_under_load_fails_no_request(three_nodes):
    # A long refresh period keeps the dead agent in the gateway's list, so requests really
    # reach it and have to fail over (the refresher would otherwise drop it first).
    app = create_app(three_nodes.kiln, strategy="round_robin", refresh_s=600, timeout=60)
    with BackgroundServer(app) as server:
        client = httpx.Client(base_url=server.url, timeout=120)
        assert client.get("/healthz").json()["agents_ready"] == 3
        for i in range(3):  # load the model in every agent before the clock starts
            assert client.post("/infer", json={"texts": [f"warm {i}"]}).status_code == 200
        done = threading.Semaphore(0)
        removed = threading.Event()

        def send(i: int) -> int:
            r = client.post("/infer", json={"texts": [f"request {i}"]})
            done.release()
            return r.status_code

        def remove_after(n: int) -> None:
            for _ in range(n):
                done.acquire()
            three_nodes.remove("n2")
            removed.set()

        remover = threading.Thread(target=remove_after, args=(60,))
        remover.start()
        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(send, range(300)))
        remover.join(60)
        assert removed.is_set()
        assert statuses.count(200) == 300
        nodes_after = {client.post("/infer", json={"texts": [f"after {i}"]}).json()["node"]
                       for i in range(6)}
        assert nodes_after == {"n1", "n3"}
        assert metric(client, "kiln_gateway_failovers_total") >= 1
        assert metric(client, "kiln_gateway_requests_failed_total") == 0
        assert metric(client, "kiln_gateway_requests_local_fallback_total") == 0
        status = client.get("/cluster").json()
        assert {a["node"]: a["status"] for a in status["agents"]}.get("n2", "offline") == "offline"

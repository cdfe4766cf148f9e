"""The gateway on the embedded default when its agent dies or is too slow: a real agent process
killed by SIGKILL comes back into service, and a request past its deadline is cancelled on the
agent, not re-run elsewhere."""

from __future__ import annotations

import os
import signal
import threading
import time

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


def agent_info(client: httpx.Client) -> dict:
    [agent] = client.get("/cluster").json()["agents"]
    assert agent["status"] == "online", agent.get("error")
    return agent


@pytest.mark.slow
def test_an_agent_killed_by_signal_serves_again_and_no_request_fails(embedded):
    app = create_app(embedded, refresh_s=0.5, timeout=120)
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=120) as client:
        assert client.post("/infer", json={"texts": ["warm"]}).json()["node"] == "local"
        pid = agent_info(client)["info"]["pid"]
        os.kill(pid, signal.SIGKILL)
        statuses, fallbacks = [], 0
        deadline = time.monotonic() + 120  # Ray restarts the agent: seconds to a minute
        back_at = None
        i = 0
        while time.monotonic() < deadline:
            r = client.post("/infer", json={"texts": [f"after the kill {i}"]})
            i += 1
            statuses.append(r.status_code)
            if r.status_code == 200 and not r.json()["fallback"]:
                if back_at is None and fallbacks:
                    back_at = time.monotonic()
                    break
            else:
                fallbacks += 1
            time.sleep(0.2)
        assert set(statuses) == {200}, statuses  # the fallback covered the gap
        # the dead agent was noticed, then reused
        assert fallbacks >= 1 and back_at is not None, client.get("/cluster").json()["agents"]
        assert agent_info(client)["info"]["pid"] != pid  # a new process under the same name
        assert client.get("/healthz").json()["status"] == "ok"
        assert client.get("/readyz").status_code == 200


@pytest.mark.slow
def test_a_request_past_its_deadline_is_cancelled_on_the_agent_not_retried(embedded):
    patient = create_app(embedded, timeout=300)
    hasty = create_app(embedded, timeout=0.5)
    with BackgroundServer(patient) as slow_server, BackgroundServer(hasty) as fast_server, \
            httpx.Client(base_url=slow_server.url, timeout=300) as slow, \
            httpx.Client(base_url=fast_server.url, timeout=60) as fast:
        slow.post("/infer", json={"texts": ["warm"]})
        dropped = agent_info(slow)["info"]["batcher"].get("dropped", 0)
        # A long request keeps the agent's encoder busy for seconds ...
        long_texts = [f"{i} " + "a long text to keep the encoder busy " * 12 for i in range(300)]
        busy = threading.Thread(target=slow.post, args=("/infer",), kwargs={
            "json": {"texts": long_texts}})
        busy.start()
        time.sleep(0.5)
        # ... so this one waits in the agent's queue past its 0.5 s deadline.
        r = fast.post("/infer", json={"texts": ["cancel me", "and me"]})
        busy.join(300)
        assert r.status_code == 504 and r.json()["error"]["type"] == "deadline_exceeded"
        assert metric(fast, "kiln_gateway_agent_calls_cancelled_total") == 1
        assert metric(fast, "kiln_gateway_failovers_total") == 0
        assert metric(fast, "kiln_gateway_requests_local_fallback_total") == 0
        # the agent dropped it before encoding it: nothing of it is in the agent's cache
        assert agent_info(slow)["info"]["batcher"]["dropped"] == dropped + 1
        again = slow.post("/infer", json={"texts": ["cancel me"]}).json()
        assert again["cached"] == 0 and again["fallback"] is False


@pytest.mark.slow
def test_a_restarted_agent_makes_its_capabilities_states_again_before_any_job(embedded):
    import kiln

    agent = embedded.agents()[0]
    kiln.embed(["load the encoder"])
    before = agent.info(timeout=60)
    assert "embed" in before["capabilities"]
    os.kill(before["pid"], signal.SIGKILL)

    def restarted() -> dict | None:
        try:
            info = agent.info(timeout=5)
        except Exception:  # restarting: Ray refuses calls until its __init__ returns
            return None
        return info if info["pid"] != before["pid"] else None

    deadline = time.monotonic() + 300  # generous: the re-imports take ~15 s on an idle 2-core machine
    while time.monotonic() < deadline:
        info = restarted()
        if info is not None and "rewarm_s" in info["startup"]:
            break
        time.sleep(0.2)
    # no job was sent to the new process: it made the embed state (its imports) by itself
    assert info is not None and info["capabilities"] == before["capabilities"], info
    assert info["startup"]["rewarm_s"] > 0
    assert agent.info()["jobs"]["run"] == 0

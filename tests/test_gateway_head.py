"""``kiln serve`` outlives its cluster's head: it starts before the head, serves from its
fallback, attaches when the head comes up, stays up and serves when the head is killed, and
attaches again when a new head takes the port. A real head (`kiln up`) in its own scratch
HOME and RAY_TMPDIR, killed by SIGKILL, and a real `kiln serve` under load."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import httpx
import psutil
import pytest
from heads import BIN, Head, free_port

TOKEN = "kiln-gateway-test-token-0123456789abcdef"


class Load(threading.Thread):
    """One client sending /infer back to back; keeps every status and fallback flag."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stop, self.results = url, threading.Event(), []

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            i = 0
            while not self.stop.is_set():
                i += 1
                try:
                    r = client.post("/infer", json={"texts": [f"under load {i}"]})
                    self.results.append((time.monotonic(), r.status_code,
                                         r.status_code == 200 and r.json()["fallback"]))
                except httpx.HTTPError as err:
                    self.results.append((time.monotonic(), type(err).__name__, None))
                time.sleep(0.05)


def wait_for(check, what: str, timeout: float) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.25)
    return time.monotonic() - started


@pytest.mark.slow
def health(url: str) -> dict:
    """The gateway's /healthz, or {} while it does not answer."""
    try:
        return httpx.get(url + "/healthz", timeout=5).json()
    except httpx.HTTPError:
        return {}


@pytest.fixture
def notebook_head(tmp_path, monkeypatch):
    """A scratch head, not up yet, whose token and RAY_TMPDIR this process's environment carries,
    as a notebook's machine has them after `kiln join` (a SupervisedServer's child inherits
    them); removed afterwards."""
    head = Head(TOKEN, prefix="kgw")
    for key, value in head.env(RAY_TMPDIR=str(tmp_path / "gw")).items():
        monkeypatch.setenv(key, value)
    try:
        yield head
    finally:
        head.remove()


def test_the_gateway_outlives_its_head_and_attaches_to_the_next_one(tmp_path):
    head = Head(TOKEN, prefix="kgw")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    gateway = subprocess.Popen(
        [str(BIN / "kiln"), "serve", "--port", str(port), "--address", head.address,
         "--allow-no-cluster", "--timeout", "60"],
        env=head.env(RAY_TMPDIR=str(tmp_path / "gw")), stdout=subprocess.DEVNULL,
        stderr=log.open("wb"), start_new_session=True)
    load = None
    try:
        # 1. no head yet: it serves from its fallback and says so
        wait_for(lambda: health(url).get("cluster") == "detached", "gateway up", 120)
        assert httpx.get(url + "/readyz").status_code == 503
        r = httpx.post(url + "/infer", json={"texts": ["before the head"]}, timeout=60)
        assert r.status_code == 200 and r.json()["fallback"] is True
        # 2. the head comes up: it attaches
        head.up()
        wait_for(lambda: health(url).get("agents_ready", 0) >= 1, "attached", 120)
        assert httpx.get(url + "/readyz").status_code == 200
        supervisor = psutil.Process(gateway.pid)
        first_worker = httpx.get(url + "/cluster", timeout=30).json()["gateway"]["pid"]
        load = Load(url)
        load.start()
        wait_for(lambda: any(not fb for _, s, fb in load.results if s == 200), "agents serve", 60)
        # 3. the head dies: degraded, still serving
        head.kill()
        killed = time.monotonic()
        wait_for(lambda: health(url).get("status") == "degraded", "degraded", 30)
        wait_for(lambda: any(t > killed + 1 and fb for t, s, fb in load.results), "fallback", 30)
        # 4. a new head on the same port: a fresh worker attaches to it
        head.up()
        back = time.monotonic()
        recovery = wait_for(lambda: any(t > back and s == 200 and not fb
                                        for t, s, fb in load.results), "re-attached", 120)
        load.stop.set()
        load.join(60)
        statuses = [s for _, s, _ in load.results]
        answered = [s for s in statuses if isinstance(s, int)]
        assert set(answered) == {200}, [r for r in load.results if r[1] != 200][:5]
        # Known gap: when a new head appears before the fresh worker serves, the old worker
        # (whose Ray driver would abort on the new cluster) stops at once, and a request the
        # client was just sending on its kept-alive connection is cut (RemoteProtocolError):
        # at most once for this one client. Every request that got an answer got a 200.
        assert len(statuses) - len(answered) <= 1, [r for r in load.results if r[1] != 200]
        assert supervisor.is_running() and gateway.poll() is None  # one gateway throughout
        assert httpx.get(url + "/cluster", timeout=30).json()["gateway"]["pid"] != first_worker
        assert health(url) == {"status": "ok", "agents_ready": 1, "fallback": True,
                            "cluster": "attached"}
        print(f"requests {len(statuses)}, served by fallback "
              f"{sum(1 for *_, fb in load.results if fb)}, recovery {recovery:.1f} s after the "
              "head came back")
    finally:
        if load is not None:
            load.stop.set()
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(gateway.pid, signal.SIGKILL)
        head.remove()
        print(log.read_text()[-3000:])


@pytest.mark.slow
def test_a_gateway_started_from_a_notebook_attaches_again_after_a_head_restart(
        no_cluster, notebook_head):
    from kiln.serve._supervisor import SupervisedServer

    head = notebook_head
    head.up()
    with SupervisedServer(address=head.address, port=0, timeout=60) as server:
        def from_an_agent() -> bool:
            r = httpx.post(server.url + "/infer", json={"texts": ["from an agent?"]},
                           timeout=60)
            return r.status_code == 200 and not r.json()["fallback"]

        wait_for(lambda: health(server.url).get("agents_ready", 0) >= 1, "attached", 180)
        wait_for(from_an_agent, "an agent answers", 120)
        head.kill()
        wait_for(lambda: health(server.url).get("status") == "degraded", "degraded", 30)
        head.up()
        # a BackgroundServer would stay degraded here until its process restarted
        wait_for(lambda: health(server.url).get("agents_ready", 0) >= 1, "attached again", 180)
        wait_for(from_an_agent, "an agent answers again", 120)
        assert health(server.url)["cluster"] == "attached"
    assert not server.process.is_alive()  # stopped with its workers


@pytest.mark.slow
def test_after_a_head_restart_with_preload_an_agent_answers_within_seconds_of_kiln_up(tmp_path):
    # `kiln up --preload embed` returns once the head's agent has loaded its model, and the
    # fresh gateway worker, attached meanwhile, looks for agents as soon as it attaches: the
    # issue's goal is an agent's answer within 10 s of `kiln up` returning.
    head = Head(TOKEN, prefix="kgw", up_args=("--preload", "embed"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    gateway = None
    load = None
    try:
        head.up()
        gateway = subprocess.Popen(
            [str(BIN / "kiln"), "serve", "--port", str(port), "--address", head.address,
             "--allow-no-cluster", "--timeout", "60"],
            env=head.env(RAY_TMPDIR=str(tmp_path / "gw")), stdout=subprocess.DEVNULL,
            stderr=log.open("wb"), start_new_session=True)
        load = Load(url)
        load.start()
        wait_for(lambda: any(s == 200 and not fb for _, s, fb in load.results), "agents serve",
                 180)
        head.kill()
        killed = time.monotonic()
        wait_for(lambda: any(t > killed + 1 and fb for t, s, fb in load.results), "fallback", 30)
        head.up()
        back = time.monotonic()
        assert "Agents warm (kiln-agent:head1:cpu)" in " ".join(head.up_output.split())
        recovery = wait_for(lambda: any(t > back and s == 200 and not fb
                                        for t, s, fb in load.results), "an agent answers", 60)
        assert recovery <= 10, recovery
        print(f"an agent answered {recovery:.1f} s after `kiln up` returned")
    finally:
        if load is not None:
            load.stop.set()
        if gateway is not None:
            gateway.send_signal(signal.SIGTERM)
            try:
                gateway.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(gateway.pid, signal.SIGKILL)
        head.remove()
        print(log.read_text()[-3000:] if log.exists() else "")


@pytest.mark.slow
def test_a_detached_gateway_finds_its_agents_soon_after_the_head_comes_up_whatever_its_refresh(
        no_cluster, notebook_head):
    from kiln.serve._supervisor import SupervisedServer

    head = notebook_head
    # no head yet: the gateway looks for it every second, as a fresh worker does after a head
    # restart, while its refreshes of the agents are a minute apart
    with SupervisedServer(address=head.address, allow_no_cluster=True, refresh_s=60,
                          port=0) as server:
        wait_for(lambda: health(server.url).get("cluster") == "detached", "gateway up", 120)
        head.up()
        took = wait_for(lambda: health(server.url).get("agents_ready", 0) >= 1, "an agent ready",
                        45)
        assert health(server.url) == {"status": "ok", "agents_ready": 1, "fallback": True,
                                      "cluster": "attached"}
        print(f"attached and found its agent {took:.1f} s after `kiln up` returned")

"""``kiln serve`` as an operator runs it: a subprocess, its arguments, its flags, and a flood of
idle connections. The cluster address here is a loopback port where nothing listens, so the
gateway serves from its fallback (``--allow-no-cluster``) and no Ray starts."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

KILN = str(Path(sys.executable).with_name("kiln"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200", "RAY_USAGE_STATS_ENABLED": "0",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


class Gateway:
    """``kiln serve`` in a subprocess; its stderr goes to ``log``."""

    def __init__(self, tmp: Path, *args: str, nofile: int | None = None,
                 wait: bool = True) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"serve-{self.port}.log"

        def limits() -> None:
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            [KILN, "serve", "--port", str(self.port), *args], env=_env(),
            stdout=subprocess.DEVNULL, stderr=self.log.open("wb"), preexec_fn=limits,
            start_new_session=True)
        if wait:
            self.wait()

    def wait(self) -> None:
        deadline = time.monotonic() + 120
        while True:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def nowhere() -> str:
    return f"127.0.0.1:{_free_port()}"


BAD = [
    ("missing key file", ["--api-key-file", "/nonexistent/key"], "--api-key-file /nonexistent/key"),
    ("bad strategy", ["--strategy", "fastest"], "--strategy 'fastest'"),
    ("public host with no key", ["--host", "0.0.0.0"], "--api-key-file"),
    ("several workers, no address", ["--workers", "2"], "--address"),  # no --address below
    ("bad fallback", ["--fallback", "maybe"], "--fallback"),
    ("bad parser", ["--http", "h2"], "--http 'h2'"),
    ("bad event loop", ["--loop", "tokio"], "--loop 'tokio'"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_a_bad_argument_is_one_line_before_anything_connects(case):
    _, args, names = case
    # The address is a port where nothing listens: connecting first would report that instead.
    where = [] if "--workers" in args else ["--address", nowhere()]
    r = subprocess.run([KILN, "serve", *where, *args], env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], r.stderr
    assert "Traceback" not in r.stderr and "cannot attach" not in r.stderr


def test_no_cluster_without_permission_is_one_line_and_exit(tmp_path):
    r = subprocess.run([KILN, "serve", "--port", str(_free_port()), "--address", nowhere(),
                        "--fallback", "off"], env=_env(), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0
    assert "error: cannot attach to the cluster" in r.stderr and "--allow-no-cluster" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.fixture(scope="module")
def gateways(tmp_path_factory):
    """Two gateways with no cluster: fallback on (allowed 1,024 open files), fallback off."""
    tmp = tmp_path_factory.mktemp("serve")
    started = [Gateway(tmp, "--address", nowhere(), "--allow-no-cluster", "--timeout-header",
                       "60", nofile=1024, wait=False),
               Gateway(tmp, "--address", nowhere(), "--allow-no-cluster", "--fallback", "off",
                       wait=False)]
    try:
        for gw in started:
            gw.wait()
        yield started
    finally:
        for gw in started:
            gw.stop()


@pytest.mark.slow
def test_fallback_on_and_off_without_a_cluster(gateways):
    on, off = gateways
    for gw in (on, off):
        health = httpx.get(gw.url + "/healthz").json()
        assert health["status"] == "degraded" and health["cluster"] == "detached"
        assert httpx.get(gw.url + "/readyz").status_code == 503
    r = httpx.post(on.url + "/infer", json={"texts": ["served by the gateway"]}, timeout=60)
    assert r.status_code == 200 and r.json()["fallback"] is True
    r = httpx.post(off.url + "/infer", json={"texts": ["nobody to serve it"]}, timeout=60)
    assert r.status_code == 503 and "fallback is off" in r.json()["error"]["message"]
    assert httpx.get(off.url + "/cluster").json()["gateway"]["fallback_loaded"] is False


@pytest.mark.slow
def test_thousands_of_idle_connections_leave_healthz_answering(gateways):
    # The gateway may hold 1,024 files; 2,000 clients connect and send nothing. Plain uvicorn
    # runs out of descriptors: accepting pauses, /healthz stalls, "Too many open files" floods
    # the log.
    gw = gateways[0]
    idle: list[socket.socket] = []
    try:
        for _ in range(2000):
            idle.append(socket.create_connection(("127.0.0.1", gw.port), timeout=10))
        with httpx.Client(base_url=gw.url, timeout=10) as client:
            for _ in range(5):
                assert client.get("/healthz").status_code == 200
            r = client.post("/infer", json={"texts": ["still serving"]}, timeout=60)
            assert r.status_code == 200
        time.sleep(1)
        # most idle connections were closed to make room; the rest stay usable
        closed = 0
        for sock in idle:
            sock.setblocking(False)
            try:
                closed += sock.recv(1) == b""
            except BlockingIOError:
                pass
        assert closed >= 1000
        assert gw.log.stat().st_size < 200_000, gw.log.read_text()[-2000:]
        assert "Too many open files" not in gw.log.read_text()
    finally:
        for sock in idle:
            sock.close()

"""A real head (`kiln up`) in a scratch HOME and RAY_TMPDIR of its own, for the tests and benches
that kill it (tests/test_gateway_head.py, bench/gateway_faults.py); and finding and killing the
processes of such a scratch by their RAY_TMPDIR (tests/test_cli.py), never by name.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

import psutil

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_with_env(key: str, prefix: str) -> list[psutil.Process]:
    """Processes whose environment has ``key`` starting with ``prefix``, and their children
    (a Ray process that renames itself, ``ray::DashboardAgent``, overwrites its environment)."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(key, "").startswith(prefix):
                found[proc.pid] = proc
                found.update((c.pid, c) for c in proc.children(recursive=True))
        except (psutil.Error, OSError):
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


def kill_all(procs: Iterable[psutil.Process]) -> None:
    """SIGKILL ``procs`` and wait (15 s at most) until they are gone."""
    procs = list(procs)
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=15)


class Head:
    """`kiln up` on a port of its own; ``kill`` stops exactly its processes (by RAY_TMPDIR).

    ``copy_kiln``: every process of the run (head, agents, gateway) imports a copy of kiln
    taken now: an agent that Ray restarts re-checks kiln's source hash against the gateway's,
    and a source tree being edited meanwhile would make it refuse.
    """

    def __init__(self, token: str, *, prefix: str = "kh", copy_kiln: bool = False,
                 up_args: tuple[str, ...] = ()) -> None:
        # Short: Ray's socket paths must stay under 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        (self.root / "home").mkdir()
        self.token = token
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.copy_kiln = copy_kiln
        self.up_args = up_args  # more `kiln up` flags, e.g. ("--preload", "embed")
        self.up_output = ""
        if copy_kiln:
            import kiln

            shutil.copytree(Path(kiln.__file__).parent, self.root / "src" / "kiln",
                            ignore=shutil.ignore_patterns("__pycache__"))

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "KILN_"))}
        env.update(HOME=str(self.root / "home"), RAY_TMPDIR=str(self.root / "t"),
                   RAY_USAGE_STATS_ENABLED="0", JAX_PLATFORMS="cpu", COLUMNS="200",
                   RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, HF_HUB_OFFLINE="1",
                   TRANSFORMERS_OFFLINE="1")
        if self.copy_kiln:
            env["PYTHONPATH"] = str(self.root / "src")
        return {**env, **extra}

    def up(self) -> None:
        r = subprocess.run([str(BIN / "kiln"), "up", "--port", str(self.port), "--name", "head1",
                            *self.up_args],
                           env=self.env(), capture_output=True, text=True, timeout=300)
        if r.returncode:
            raise RuntimeError(f"kiln up failed:\n{r.stderr[-3000:]}")
        self.up_output = r.stdout  # its banner (and, with --preload, how soon its agents warmed)

    def kill(self) -> None:
        kill_all(processes_with_env("RAY_TMPDIR", str(self.root / "t")))

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)

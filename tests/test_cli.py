"""The `kiln` command line, run the way a user runs it: the venv's `kiln`, in real processes.

The two-node cluster here is made by the CLI itself (`kiln up`, then `kiln join`). Its processes
get their own HOME (so the head makes its own Ray auth token, and the drivers and the joining
node know it only from RAY_AUTH_MODE / RAY_AUTH_TOKEN, as on another machine) and their own
RAY_TMPDIR (their own Ray session files). Nothing here touches this process's environment or
the in-process Ray of the other tests: every process of that cluster carries this module's
temporary directory in its RAY_TMPDIR, which is how the finalizer finds and kills exactly those,
even when a test fails (`ray stop` would kill every Ray on the machine).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from heads import free_port, kill_all, processes_with_env

from kiln.bayes._examples import seed_001_posterior_means

BIN = Path(sys.executable).parent
KILN = str(BIN / "kiln")
RAY = str(BIN / "ray")
COMMANDS = ("demo", "up", "join", "down", "status", "doctor", "serve")
# What a user's shell might carry that would change what these commands attach to.
_SCRUB = ("RAY_ADDRESS", "KILN_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
          "KILN_CLI_NODE")
# The agents' compiled programs, shared with the real HOME so a fake HOME does not recompile.
_JAX_CACHE = os.environ.get("KILN_JAX_CACHE") or os.path.expanduser("~/.cache/kiln/jax")


def multinode(fn):
    return pytest.mark.slow(pytest.mark.multinode(fn))


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env.update(COLUMNS="200", RAY_USAGE_STATS_ENABLED="0", JAX_PLATFORMS="cpu")
    env.update(extra)
    return env


def kiln(*args: object, env: dict[str, str] | None = None, timeout: float = 120
         ) -> subprocess.CompletedProcess:
    return subprocess.run([KILN, *map(str, args)], env=env or _env(), capture_output=True,
                          text=True, timeout=timeout)


def _show(r: subprocess.CompletedProcess) -> str:
    return f"exit {r.returncode}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}"


def _flat(text: str) -> str:
    """Rich wraps long lines; compare messages with their whitespace collapsed."""
    return " ".join(text.split())


def _without_arviz_notice(stderr: str) -> str:
    notice = re.compile(r"\S*arviz/__init__.py:\d+: FutureWarning: \n"
                        r"ArviZ is undergoing a major refactor.*?\n  warn\(\n", re.S)
    return notice.sub("", stderr).strip()


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _argv_option(argv: list[str], name: str) -> str:
    return next(a.split("=", 1)[1] for a in argv if a.startswith(name + "="))


def _dry_run(stdout: str) -> tuple[dict[str, str], list[str]]:
    """A dry run's `VAR=value ... ray start ...`: (the variables, the command)."""
    words = shlex.split(stdout)
    env = {}
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    return env, words


# -- no Ray: help, dry runs, bad input, an address where nothing listens ------------------------
def test_help_lists_every_command():
    r = kiln("--help")
    assert r.returncode == 0, _show(r)
    for command in COMMANDS:
        assert re.search(rf"^\W*{command}\s", r.stdout, re.MULTILINE), command


@pytest.mark.parametrize(("args", "host", "block"), [
    ((), "127.0.0.1", False),
    (("--host", "10.1.2.3", "--block"), "10.1.2.3", True),
])
def test_up_dry_run_prints_the_exact_ray_head_command(args, host, block):
    r = kiln("up", "--port", 6390, "--name", "head1", "--dry-run", *args)
    assert r.returncode == 0, _show(r)
    assert len(r.stdout.splitlines()) == 1  # stdout is the command alone, quoted for a shell
    env, argv = _dry_run(r.stdout)
    assert argv[:3] == [RAY, "start", "--head"]
    # Node death detected within seconds, not Ray's minute; no Prometheus exporter on every
    # interface; no autoscaler monitor (its metrics port listens on every interface too).
    assert env == {"RAY_enable_metrics_collection": "0", "RAY_health_check_period_ms": "1000",
                   "RAY_health_check_timeout_ms": "1500", "RAY_health_check_failure_threshold": "3"}
    assert "--no-monitor" in argv and "--include-dashboard=false" in argv
    assert f"--node-ip-address={host}" in argv  # 127.0.0.1 unless --host
    assert "--port=6390" in argv
    assert json.loads(_argv_option(argv, "--resources")) == {"kiln-node:head1": 1}
    assert ("--block" in argv) is block
    banner = _flat(r.stderr)
    assert f"kiln join {host}:6390 --name gpu2" in banner
    assert "RAY_AUTH_MODE=token" in banner and "ray get-auth-token" in banner


def test_join_dry_run_prints_the_exact_ray_worker_command():
    r = kiln("join", "127.0.0.1:6390", "--name", "gpu2", "--num-gpus", 0, "--dry-run")
    assert r.returncode == 0, _show(r)
    assert _dry_run(r.stdout) == ({"RAY_enable_metrics_collection": "0"}, [
        RAY, "start", "--address=127.0.0.1:6390", "--min-worker-port=10002",
        "--max-worker-port=19999", "--disable-usage-stats", '--resources={"kiln-node:gpu2": 1}',
        "--num-gpus=0"])


@pytest.mark.parametrize(("port", "workers"), [(6379, (10002, 19999)), (16379, (20002, 29999)),
                                               (26379, (10002, 19999))])
def test_up_keeps_ray_worker_ports_away_from_the_head_port(port, workers):
    # Ray's workers take 10002-19999 by default: `ray start --port 16379` refuses to start.
    r = kiln("up", "--port", port, "--name", "head1", "--dry-run")
    assert r.returncode == 0, _show(r)
    _, argv = _dry_run(r.stdout)
    low, high = int(_argv_option(argv, "--min-worker-port")), int(_argv_option(argv, "--max-worker-port"))
    assert (low, high) == workers
    assert not low <= port <= high and not low <= 10001 <= high


def test_up_on_a_taken_port_fails_at_once_naming_the_port(scratch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        r = kiln("up", "--port", port, "--name", "head1", env=scratch.env(), timeout=120)
        took = time.monotonic() - started
    assert r.returncode == 1, _show(r)
    assert f"--port {port}: port {port} is taken" in _flat(r.stderr)
    assert took < 15, took  # Ray alone took ~46 s to give up
    assert not processes_with_env("RAY_TMPDIR", str(scratch.root))  # nothing was started


@pytest.mark.parametrize(("command", "name"), [
    *((("join", "127.0.0.1:1"), name) for name in
      ("bad name", "gpu2;id", "-gpu", "gpu_", "", "a" * 64, "[bold]x")),
    *((("up", "--dry-run"), name) for name in ("bad name", "")),
])
def test_a_bad_node_name_is_refused_with_a_clear_message(command, name):
    r = kiln(*command, "--name", name, timeout=60)
    assert r.returncode == 1, _show(r)
    assert "ray start" not in r.stdout  # nothing was run, nor printed to run
    message = _flat(r.stderr)
    assert f"--name {name!r}" in message and "letters, digits" in message


def test_report_tables_print_names_and_reasons_with_brackets_as_they_are():
    from rich.console import Console

    from kiln._report import checks_table, nodes_table
    from kiln.cluster import AgentRecord, Node

    reason = "failed to start: see [/tmp/kiln] and [bold]x"
    agent = AgentRecord(name="kiln-agent:[n]:cpu", node="[n]", device="cpu", state="refused",
                        reason=reason, info={"checks": [{"check": "named-node", "ok": "no"}]})
    node = Node(name="[n]", address="10.0.0.2", node_id="ab" * 28, alive=True, gpus=[],
                agents=[agent], fingerprint={})
    for table in (nodes_table([node]), checks_table([node])):
        out = io.StringIO()
        Console(file=out, width=400).print(table)
        text = out.getvalue()
        assert reason in text and "[n]" in text


def test_down_all_is_ray_stop():
    r = kiln("down", "--all", "--dry-run")
    assert r.returncode == 0, _show(r)
    assert shlex.split(r.stdout) == [RAY, "stop"]


@pytest.mark.parametrize("command", ["status", "doctor", "demo"])
def test_an_address_where_nothing_listens_fails_fast_with_a_message(command):
    started = time.monotonic()
    r = kiln(command, "--json", "--address", "127.0.0.1:1", timeout=90)
    assert time.monotonic() - started < 30  # Ray alone retries such an address for minutes
    assert r.returncode == 1, _show(r)
    assert "could not reach the Ray cluster at 127.0.0.1:1" in _flat(r.stderr)
    assert r.stdout.strip() == ""  # --json output is JSON or nothing


def test_kiln_address_in_the_environment_is_the_address():
    r = kiln("status", env=_env(KILN_ADDRESS="127.0.0.1:1"), timeout=90)
    assert r.returncode == 1, _show(r)
    assert "could not reach the Ray cluster at 127.0.0.1:1" in _flat(r.stderr)


class Scratch:
    """A HOME and a RAY_TMPDIR of its own for the Ray processes the CLI starts; ``kill`` finds
    those processes by their RAY_TMPDIR."""

    def __init__(self) -> None:
        # Short: Ray's socket paths (sockets/plasma_store, ...) must stay under 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="kcli", dir="/tmp" if os.path.isdir("/tmp") else None))
        self.home = self.root / "home"
        self.home.mkdir()

    def env(self, tmp: str = "t", **extra: str) -> dict[str, str]:
        return _env(HOME=str(self.home), RAY_TMPDIR=str(self.root / tmp),
                    KILN_JAX_CACHE=_JAX_CACHE, **extra)

    def kill(self, tmp: str = "") -> None:
        """SIGKILL every process started with this RAY_TMPDIR (or, by default, one under root)."""
        kill_all(processes_with_env("RAY_TMPDIR", str(self.root / tmp)))

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def scratch():
    s = Scratch()
    try:
        yield s
    finally:
        s.remove()


# -- the embedded default ------------------------------------------------------------------------
@pytest.mark.slow
def test_demo_on_the_embedded_default_prints_both_runs_readably_at_80_columns(scratch):
    # Piped, at 80 columns, as `kiln demo | less` on a narrow terminal shows it.
    r = kiln("demo", env=scratch.env(COLUMNS="80"), timeout=300)  # no address: a local Ray
    assert r.returncode == 0, _show(r)
    out = r.stdout
    assert max(map(len, out.splitlines())) <= 80, out
    assert "A normal model sampled on every node, draws combined" in out.splitlines()
    assert "A 4-chain Bayesian model with its pooled posterior" in out.splitlines()
    assert "seed 0" not in out.lower()  # words from kiln's design documents, not the user's
    assert "Combined 200 draws" in out  # one node: the local one
    # Nothing but kiln's own output: no Ray notice, no library warning, except ArviZ's notice
    # of its refactor (once a day per user, so on this fresh HOME), which kiln does not hide
    assert _without_arviz_notice(r.stderr) == "", r.stderr
    where = out.strip().splitlines()[-1]
    assert re.fullmatch(r"Ran on \S+ \(cpu, local Ray\): connect \d+\.\d s, "
                        r"normal \d+\.\d s, 4 chains \d+\.\d s", where), where
    row = re.search(r"│ (\S+)\s+│ cpu\s+│ 200\s+│ (\S+)\s+│ (\S+)\s+│ (\d+) ms\s+│ (\d+) ms", out)
    assert row, out
    mean, sd, on_agent, round_trip = float(row[2]), float(row[3]), int(row[4]), int(row[5])
    assert abs(mean) < 4 * sd / math.sqrt(100) and 0.7 < sd < 1.3
    assert 0 < on_agent <= round_trip
    assert "4 chains x (500 warmup + 1000 draws) on" in out
    assert len(re.findall(r"^│ [1-4]\s+│ \d\.\d{3}\s+│ \d\.\d{3}\s+│$", out, re.MULTILINE)) == 4
    assert "Pooled posterior (4000 draws across 4 chains)" in out
    exact = seed_001_posterior_means()
    for var in ("mu", "sigma"):
        m = re.search(rf"{var}:\s+(\S+) ± (\S+)\s+\(r_hat (\S+), ess (\d+)\)", out)
        assert m, out
        mean, sd, r_hat, ess = float(m[1]), float(m[2]), float(m[3]), int(m[4])
        # printed to 3 decimals: allow their rounding on top of the Monte Carlo error
        assert abs(mean - exact[var]) < 4 * sd / math.sqrt(ess) + 0.0005, (var, m[0], exact[var])
        assert r_hat < 1.01


# -- `kiln up --preload`: the head's agents are warm when it returns ----------------------------
# What a driver that attaches after `kiln up` finds: the head's one agent, and who made it.
_PROBE = """
import json, sys
import kiln
from kiln.cluster import DRIVER_ID
[agent] = kiln.connect(sys.argv[1]).agents(sys.argv[2] if len(sys.argv) > 2 else None)
info = agent.info()
print(json.dumps({"name": agent.name, "rewarming": info["rewarming"],
                  "models_loaded": info["embed"]["models_loaded"], "jobs_run": info["jobs"]["run"],
                  "made_by_this_driver": info["creator"] == DRIVER_ID}))
kiln.shutdown()
"""


@pytest.mark.slow
def test_up_with_preload_returns_once_the_heads_agent_has_loaded_the_model(scratch):
    port = free_port()
    r = kiln("up", "--port", port, "--client-port", free_port(), "--name", "head1", "--preload",
             "embed", env=scratch.env(), timeout=300)
    assert r.returncode == 0, _show(r)
    assert "Agents warm (kiln-agent:head1:cpu)" in _flat(r.stdout)
    probe = subprocess.run([sys.executable, "-c", _PROBE, f"127.0.0.1:{port}"],
                           env=scratch.env(RAY_AUTH_MODE="token"), capture_output=True, text=True,
                           timeout=120)
    assert probe.returncode == 0, _show(probe)
    # started by `kiln up`, not by the first driver; its model loaded before any job
    assert json.loads(probe.stdout.splitlines()[-1]) == {
        "name": "kiln-agent:head1:cpu", "rewarming": False, "models_loaded": ["default"],
        "jobs_run": 0, "made_by_this_driver": False}


@pytest.mark.slow
def test_up_with_a_preload_that_fails_says_the_head_is_up_and_why_its_agent_is_not(scratch):
    port = free_port()
    missing = str(scratch.root / "no-model-here")
    r = kiln("up", "--port", port, "--client-port", free_port(), "--name", "head1", "--preload",
             "embed", env=scratch.env(KILN_EMBED_MODEL_DEFAULT=missing), timeout=300)
    assert r.returncode == 1, _show(r)
    assert f"kiln join 127.0.0.1:{port} --name gpu2" in _flat(r.stdout)  # the head runs
    message = _flat(r.stderr)
    assert "the head is up, but its agents are not ready to serve" in message, message
    assert "kiln-agent:head1:cpu: preload failed: embed: ModelNotAvailableError" in message
    assert missing in message and "kiln down" in message


def test_a_negative_preload_timeout_is_refused():
    r = kiln("up", "--port", 6390, "--name", "head1", "--preload", "embed", "--preload-timeout",
             -1, "--dry-run")
    assert r.returncode == 1, _show(r)
    assert "--preload-timeout -1: use 0 or more seconds" in _flat(r.stderr)


# -- a two-node cluster made with `kiln up` and `kiln join` -------------------------------------
class CliCluster(Scratch):
    """head1 (`kiln up`) and gpu2 (`kiln join`), each a `ray start` on this machine."""

    def __init__(self) -> None:
        super().__init__()
        self.head_home = self.root / "head-home"
        self.head_home.mkdir()
        self.state = "down"  # down | clean | changed
        self.address, self.token, self.banner = "", "", ""

    def env(self, head: bool = False, tmp: str = "t", **extra: str) -> dict[str, str]:
        env = super().env(tmp, **extra)
        if head:
            env["HOME"] = str(self.head_home)
        elif self.token:
            # What the head's banner tells the user to do on every other machine.
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token)
        return env

    def kiln(self, *args: object, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
        return kiln(*args, env=self.env(**env), timeout=timeout)

    def start(self) -> None:
        self.state = "down"
        self.address, self.token = f"127.0.0.1:{free_port()}", ""
        r = self.kiln("up", "--port", self.address.split(":")[1], "--client-port", free_port(),
                      "--name", "head1", head=True)
        assert r.returncode == 0, _show(r)
        self.banner = _flat(r.stdout)
        t = subprocess.run([RAY, "get-auth-token"], env=self.env(head=True), capture_output=True,
                           text=True, timeout=60)
        assert t.returncode == 0 and t.stdout.strip(), t.stderr
        self.token = t.stdout.strip()
        r = self.kiln("join", self.address, "--name", "gpu2")
        assert r.returncode == 0, _show(r)
        self.state = "clean"

    def add_unnamed_node(self) -> None:
        """A plain `ray start` joins a node that carries no kiln name."""
        self.state = "changed"
        r = subprocess.run([RAY, "start", f"--address={self.address}"], env=self.env(),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, _show(r)

    def kill(self, tmp: str = "") -> None:
        super().kill(tmp)
        if not tmp:
            self.state = "down"


@pytest.fixture(scope="module")
def _cli_cluster():
    cluster = CliCluster()
    try:
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def cli_cluster(_cli_cluster):
    """head1 and gpu2 with a ready agent each (started again if a test changed them)."""
    if _cli_cluster.state != "clean":
        _cli_cluster.kill()
        _cli_cluster.start()
    return _cli_cluster


@pytest.fixture
def running_cli_cluster(_cli_cluster):
    """The cluster as the previous test left it, as long as it runs."""
    if _cli_cluster.state == "down":
        _cli_cluster.kill()
        _cli_cluster.start()
    return _cli_cluster


@multinode
def test_join_with_preload_returns_once_the_nodes_agent_has_loaded_the_model(cli_cluster):
    cli_cluster.state = "changed"  # a third node: the next test gets a clean cluster again
    r = cli_cluster.kiln("join", cli_cluster.address, "--name", "gpu3", "--preload", "embed",
                         timeout=300)
    assert r.returncode == 0, _show(r)
    assert "Agents warm (kiln-agent:gpu3:cpu)" in _flat(r.stdout), _show(r)
    probe = subprocess.run([sys.executable, "-c", _PROBE, cli_cluster.address, "gpu3"],
                           env=cli_cluster.env(), capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, _show(probe)
    assert json.loads(probe.stdout.splitlines()[-1]) == {
        "name": "kiln-agent:gpu3:cpu", "rewarming": False, "models_loaded": ["default"],
        "jobs_run": 0, "made_by_this_driver": False}


@multinode
def test_up_prints_the_join_command_and_how_to_pass_the_token(cli_cluster):
    assert f"kiln join {cli_cluster.address} --name gpu2" in cli_cluster.banner
    assert "Token authentication is on" in cli_cluster.banner
    assert "RAY_AUTH_MODE=token" in cli_cluster.banner
    assert f'kiln.connect("{cli_cluster.address}")' in cli_cluster.banner


@multinode
def test_status_lists_both_named_nodes_ready(cli_cluster):
    r = cli_cluster.kiln("status", "--json", "--address", cli_cluster.address)
    assert r.returncode == 0, _show(r)
    nodes = {n["name"]: n for n in json.loads(r.stdout)}
    assert set(nodes) == {"head1", "gpu2"}
    for node in nodes.values():
        assert node["state"] == "ready", node
        assert [(a["device"], a["state"]) for a in node["agents"]] == [("cpu", "ready")]
    table = cli_cluster.kiln("status", "--address", cli_cluster.address)
    assert table.returncode == 0, _show(table)
    assert re.search(r"head1\s.*\sready\s", table.stdout)
    assert re.search(r"gpu2\s.*\sready\s", table.stdout)


@multinode
@pytest.mark.parametrize("token", ["none", "wrong"])
def test_a_driver_without_the_right_token_is_refused_at_once_and_told_to_set_it(cli_cluster, token):
    # Token authentication is on: without the head's token Ray lets nobody in, and alone it
    # retries for ~20 s, a warning a second, without naming the token.
    env = cli_cluster.env()
    del env["RAY_AUTH_MODE"], env["RAY_AUTH_TOKEN"]
    if token == "wrong":
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64)
    started = time.monotonic()
    r = kiln("status", "--json", "--address", cli_cluster.address, env=env, timeout=90)
    assert time.monotonic() - started < 15
    assert r.returncode == 1, _show(r)
    message = _flat(r.stderr)
    assert f"could not attach to the Ray cluster at {cli_cluster.address}" in message
    assert "RAY_AUTH_MODE=token" in message and "RAY_AUTH_TOKEN" in message
    assert "gcs_client" not in r.stderr
    assert r.stdout.strip() == ""


@multinode
def test_doctor_passes_every_check_on_a_healthy_cluster(cli_cluster):
    r = cli_cluster.kiln("doctor", "--json", "--address", cli_cluster.address)
    assert r.returncode == 0, _show(r)
    report = json.loads(r.stdout)
    assert report["ok"] is True
    assert {n["name"] for n in report["nodes"]} == {"head1", "gpu2"}
    for node in report["nodes"]:
        (agent,) = node["agents"]
        assert [(c["check"], c["ok"]) for c in agent["checks"]] == [
            ("named-node", "yes"), ("fingerprint", "yes"), ("device", "yes")]
    settings = {s["variable"]: s for s in report["settings"]}
    assert settings["KILN_EMBED_CACHE_BYTES"]["default"] == str(256 * 2**20)
    assert all(s["description"] for s in report["settings"])
    table = cli_cluster.kiln("doctor", "--address", cli_cluster.address)
    assert table.returncode == 0, _show(table)
    assert "all checks passed" in table.stdout and "FAILED" not in table.stdout
    assert "KILN_AGENT_MEMORY_LIMIT_MB" in table.stdout


def test_doctor_names_a_kiln_variable_it_cannot_use_before_connecting():
    r = kiln("doctor", "--address", "127.0.0.1:1", env=_env(KILN_EMBED_CACHE_BYTES="lots"),
             timeout=60)
    assert r.returncode == 1, _show(r)
    assert "KILN_EMBED_CACHE_BYTES" in r.stderr and "'lots'" in r.stderr
    assert "could not attach" not in r.stderr


@multinode
def test_demo_samples_a_normal_on_both_nodes_and_a_four_chain_model(cli_cluster):
    r = cli_cluster.kiln("demo", "--json", "--address", cli_cluster.address, timeout=300)
    assert r.returncode == 0, _show(r)
    out = json.loads(r.stdout)

    assert out["where"]["address"] == cli_cluster.address
    assert set(out["seconds"]) == {"connect", "normal", "model"}
    s0 = out["normal"]  # one dispatch per node of N(0, 1), then kiln.combine
    assert sorted(n["node"] for n in s0["nodes"]) == ["gpu2", "head1"]
    for n in s0["nodes"]:
        assert (n["n"], n["device"]) == (200, "cpu")
        assert 0 < n["total_s"] <= n["round_trip_s"]
        # NUTS on a normal mixes at least as well as n/2 independent draws.
        assert abs(n["mean"]) < 4 * n["sd"] / math.sqrt(n["n"] / 2)
    both = s0["combined"]
    assert both["n"] == 400
    assert both["mean"] == pytest.approx(np.mean([n["mean"] for n in s0["nodes"]]), abs=1e-9)

    s1 = out["model"]
    assert s1["node"] in ("head1", "gpu2")
    assert len(s1["chains"]) == 4 and s1["n"] == 4 * 1000
    exact = seed_001_posterior_means()
    for var in ("mu", "sigma"):
        pooled = s1["pooled"][var]
        assert pooled["r_hat"] < 1.01
        mcse = pooled["sd"] / math.sqrt(pooled["ess_bulk"])
        assert abs(pooled["mean"] - exact[var]) < 4 * mcse, (var, pooled, exact[var])
        chain_mcse = pooled["sd"] / math.sqrt(pooled["ess_bulk"] / 4)
        for chain in s1["chains"]:
            assert abs(chain[var] - exact[var]) < 4 * chain_mcse, (var, chain, exact[var])
    assert abs(exact["mu"] - 2.25) < 0.01  # the data's mean, barely shrunk by the wide prior


@multinode
def test_doctor_exits_1_and_names_the_failed_check_of_a_node_without_a_kiln_name(cli_cluster):
    cli_cluster.add_unnamed_node()
    r = cli_cluster.kiln("doctor", "--json", "--address", cli_cluster.address)
    assert r.returncode == 1, _show(r)
    report = json.loads(r.stdout)
    assert report["ok"] is False
    by_name = {n["name"]: n for n in report["nodes"]}
    assert by_name["head1"]["state"] == by_name["gpu2"]["state"] == "ready"
    (unnamed,) = [n for name, n in by_name.items() if name.startswith("unnamed-")]
    assert unnamed["state"] == "refused"
    (agent,) = unnamed["agents"]
    assert (agent["state"], agent["check"]) == ("refused", "named-node")
    assert {c["check"]: c["ok"] for c in agent["checks"]}["named-node"] == "no"
    assert "kiln join" in agent["reason"]  # says how to fix it

    table = cli_cluster.kiln("doctor", "--address", cli_cluster.address)
    assert table.returncode == 1, _show(table)
    assert "FAILED" in table.stdout
    assert f"{agent['name']}: the named-node check failed" in _flat(table.stdout)


@multinode
def test_down_stops_the_kiln_nodes_and_leaves_other_ray_alone(running_cli_cluster):
    cluster = running_cli_cluster
    # Another Ray on this machine, not started by kiln: `kiln down` must leave it running.
    other = subprocess.run(
        [RAY, "start", "--head", f"--port={free_port()}", f"--ray-client-server-port={free_port()}",
         "--include-dashboard=false", "--num-cpus=0"],
        env=cluster.env(head=True, tmp="other"), capture_output=True, text=True, timeout=120)
    try:
        assert other.returncode == 0, _show(other)
        others = [p for p in processes_with_env("RAY_TMPDIR", str(cluster.root / "other"))
                  if p.name() in ("raylet", "gcs_server")]
        assert len(others) == 2
        kiln_nodes = [p for p in processes_with_env("RAY_TMPDIR", str(cluster.root / "t"))
                      if p.name() == "raylet" and "KILN_CLI_NODE" in p.environ()]
        assert len(kiln_nodes) == 2
        # And the in-process Ray of the other tests (conftest's embedded default), if one runs.
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            others += [p for p in psutil.Process().children(recursive=True)
                       if p.name() in ("raylet", "gcs_server")]

        r = cluster.kiln("down", timeout=120)
        assert r.returncode == 0, _show(r)
        assert "stopped kiln node(s) gpu2, head1" in _flat(r.stdout)
        assert not [p for p in kiln_nodes if _alive(p)]
        assert all(_alive(p) for p in others)

        after = cluster.kiln("status", "--address", cluster.address, timeout=90)
        assert after.returncode == 1 and "could not reach" in _flat(after.stderr), _show(after)
    finally:
        cluster.kill(tmp="other")
        cluster.kill()

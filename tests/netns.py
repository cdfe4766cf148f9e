"""Real hosts for the tests and benchmarks: Linux network namespaces on one machine.

``bench/netns.sh`` makes the network (four namespaces wired to a bridge, 10.77.0.1-4); this module
runs processes on those hosts, lists their sockets, pulls their cables, and tears it all down.

    with Hosts() as hosts:                       # bench/netns.sh up ... down, whatever happens
        cluster = NetnsCluster(hosts).start()    # the README's `kiln up` / `kiln join`, as written
        hosts.python("h4", DRIVER_CODE)          # a driver on the driver host
        hosts.listening("h1")                    # what the head listens on
        hosts.link("h2", up=False)               # h2 drops off the network (no process exits)

The hosts share this machine's filesystem and process table, so everything Ray keeps on disk is
given per host: HOME (Ray's auth token in ~/.ray), RAY_TMPDIR (sessions, logs, unix sockets,
``ray_current_cluster``). Ray's object store maps files in /dev/shm that it unlinks at once, under
random names: those do not collide. The JAX compilation cache is shared on purpose (it is keyed by
program). Tear-down SIGKILLs every process in each namespace (``ip netns pids``), so nothing a
test started survives it, whoever started it and however the test ended.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "netns.sh"
BIN = Path(sys.executable).parent
KILN = str(BIN / "kiln")
RAY = str(BIN / "ray")
PREFIX = "kiln"
SUBNET = "10.77.0"
HOSTS = ("h1", "h2", "h3", "h4")
LOCK = Path("/tmp/kiln-netns.lock")  # one set of hosts on this machine at a time
ROOT = Path("/tmp/kiln-hosts")  # each host's HOME and RAY_TMPDIR (short: unix socket paths)
# What a user's shell might carry that would change what the commands attach to.
_SCRUB = ("RAY_ADDRESS", "KILN_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
          "KILN_CLI_NODE", "RAY_TMPDIR", "VIRTUAL_ENV")
_SCRIPT_ENV = {**os.environ, "KILN_NETNS_PREFIX": PREFIX, "KILN_NETNS_SUBNET": SUBNET,
               "KILN_NETNS_PYTHON": sys.executable,
               "KILN_NETNS_ROOT": str(ROOT)}
_JAX_CACHE = os.environ.get("KILN_JAX_CACHE") or os.path.expanduser("~/.cache/kiln/jax")


def unavailable() -> str | None:
    """Why network namespaces cannot be made here (None when they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None or shutil.which("ss") is None:
        return "iproute2 (ip, ss) is not installed"
    probe = f"{PREFIX}-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def address(host: str) -> str:
    return f"{SUBNET}.{HOSTS.index(host) + 1}"


@dataclass(frozen=True)
class Socket:
    """One listening TCP socket: ``ss -ltnp`` on a host."""

    address: str   # 10.77.0.1, 127.0.0.1, 0.0.0.0 / * / :: for every interface
    port: int
    process: str

    @property
    def everywhere(self) -> bool:
        return self.address in ("0.0.0.0", "*", "::", "[::]")

    def __str__(self) -> str:
        return f"{self.address}:{self.port} {self.process}"


def _parse_ss(text: str) -> list[Socket]:
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        local = parts[3]
        addr, _, port = local.rpartition(":")
        addr = addr.strip("[]")
        if addr.startswith("::ffff:"):  # an IPv4 address on a dual-stack socket
            addr = addr[len("::ffff:"):]
        proc = ""
        if "users:((" in line:
            proc = line.split('users:(("', 1)[1].split('"', 1)[0]
        out.append(Socket(addr, int(port), proc))
    return sorted(set(out), key=lambda s: (s.port, s.address))


class Hosts:
    """h1..h4, each a network namespace with its own address, HOME and Ray temp dir."""

    def __init__(self, lock_wait: float = 600.0) -> None:
        self.lock_wait = lock_wait
        self.root = ROOT
        self.token = ""
        self._lock = None
        self._procs: list[subprocess.Popen] = []

    # -- lifetime ------------------------------------------------------------------------------
    def up(self) -> Hosts:
        self._lock = open(LOCK, "w")  # noqa: SIM115 (held until down)
        deadline = time.monotonic() + self.lock_wait
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{LOCK} is held: another set of hosts is up") from None
                time.sleep(1)
        self._script("up")
        return self

    def down(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
        try:
            self._script("down")
        finally:
            for proc in self._procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    def __enter__(self) -> Hosts:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    def _script(self, *args: str) -> None:
        r = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                           env=_SCRIPT_ENV)
        if r.returncode != 0:
            raise RuntimeError(f"bench/netns.sh {' '.join(args)} failed: {r.stderr.strip()}")

    # -- running things on a host -------------------------------------------------------------
    def env(self, host: str, token: bool = True, **extra: str) -> dict[str, str]:
        """The environment of a process on ``host``: its own HOME and Ray temp dir; the head's
        token when ``token`` (as the README tells every other machine to set it)."""
        env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
        env.update(HOME=str(self.root / host / "home"), RAY_TMPDIR=str(self.root / host / "tmp"),
                   TMPDIR=str(self.root / host / "tmp"), KILN_JAX_CACHE=_JAX_CACHE,
                   RAY_USAGE_STATS_ENABLED="0", JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1",
                   TRANSFORMERS_OFFLINE="1", COLUMNS="200", PYTHONUNBUFFERED="1",
                   **{k: v for k, v in _SCRIPT_ENV.items() if k.startswith("KILN_NETNS")})
        if token and self.token and host != "h1":
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token)
        env.update(extra)
        return env

    def argv(self, host: str, *args: object) -> list[str]:
        """``args`` run on ``host``: in its network, PID and mount namespaces (bench/netns.sh)."""
        return [str(SCRIPT), "exec", host, *map(str, args)]

    def run(self, host: str, *args: object, timeout: float = 120, env: dict | None = None,
            token: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(host, *args), env=env or self.env(host, token),
                              capture_output=True, text=True, timeout=timeout)

    def popen(self, host: str, *args: object, env: dict | None = None, token: bool = True,
              log: str | None = None) -> subprocess.Popen:
        """Start a long-running process on ``host``; its output goes to ``log`` under the root."""
        out = open(self.root / host / (log or "popen.log"), "ab")  # noqa: SIM115
        proc = subprocess.Popen(self.argv(host, *args), env=env or self.env(host, token),
                                stdout=out, stderr=subprocess.STDOUT)
        out.close()
        self._procs.append(proc)
        return proc

    def kiln(self, host: str, *args: object, timeout: float = 300, token: bool = True,
             **extra: str) -> subprocess.CompletedProcess:
        return self.run(host, KILN, *args, timeout=timeout,
                        env=self.env(host, token, **extra), token=token)

    def python(self, host: str, code: str, timeout: float = 180, token: bool = True,
               **extra: str) -> subprocess.CompletedProcess:
        """Run Python ``code`` on ``host`` (a driver, a load generator)."""
        return self.run(host, sys.executable, "-c", code, timeout=timeout,
                        env=self.env(host, token, **extra), token=token)

    # -- looking at a host --------------------------------------------------------------------
    def listening(self, host: str) -> list[Socket]:
        r = subprocess.run(["ip", "netns", "exec", f"{PREFIX}-{host}", "ss", "-ltnpH"],
                           capture_output=True, text=True, timeout=30)
        return _parse_ss(r.stdout)

    def pids(self, host: str) -> list[int]:
        r = subprocess.run(["ip", "netns", "pids", f"{PREFIX}-{host}"], capture_output=True,
                           text=True, timeout=30)
        return [int(p) for p in r.stdout.split()]

    def processes(self, host: str, title: str) -> list[psutil.Process]:
        """The processes on ``host`` whose title (Ray renames its workers) starts with ``title``."""
        found = []
        for pid in self.pids(host):
            try:
                proc = psutil.Process(pid)
                cmd = " ".join(proc.cmdline())
                if cmd.startswith(title) or proc.name().startswith(title):
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    # -- faults -------------------------------------------------------------------------------
    def link(self, host: str, up: bool) -> None:
        """Plug or pull ``host``'s cable (its port on the switch): no process notices at once."""
        self._script("link", host, "up" if up else "down")

    def kill(self, host: str) -> int:
        """SIGKILL every process on ``host`` but its init (the machine crashed and rebooted);
        returns how many."""
        init = int((self.root / host / "init.pid").read_text())
        pids = [p for p in self.pids(host) if p != init]
        for pid in pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        psutil.wait_procs([p for p in map(_proc, pids) if p], timeout=15)
        return len(pids)


def _proc(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


class NetnsCluster:
    """The README's cluster commands, as written, on the hosts: `kiln up --host 10.77.0.1 --name
    head1` on h1, `kiln join 10.77.0.1:PORT --name gpu2` on h2 (gpu3 on h3); h4 is the driver."""

    WORKERS = {"h2": "gpu2", "h3": "gpu3", "h4": "drv4"}
    COMPUTE = ["head1", "gpu2", "gpu3"]

    def __init__(self, hosts: Hosts, port: int = 6379) -> None:
        self.hosts = hosts
        self.port = port
        self.address = f"{address('h1')}:{port}"
        self.outputs: dict[str, subprocess.CompletedProcess] = {}

    def start(self) -> NetnsCluster:
        """The head and the two workers; the driver host joins on the first ``driver()``."""
        self.up()
        for host in ("h2", "h3"):
            self.join(host)
        return self

    def up(self) -> subprocess.CompletedProcess:
        r = self.hosts.kiln("h1", "up", "--host", address("h1"), "--port", self.port,
                            "--name", "head1")
        self.outputs["up"] = _check(r)
        t = _check(self.hosts.run("h1", RAY, "get-auth-token", timeout=60))
        self.hosts.token = t.stdout.strip()
        return r

    def join(self, host: str) -> subprocess.CompletedProcess:
        r = self.hosts.kiln(host, "join", self.address, "--name", self.WORKERS[host])
        self.outputs[f"join {host}"] = _check(r)
        return r

    def join_driver_host(self) -> None:
        """Ray runs a driver only on a node of its cluster: the driver host joins (as drv4)."""
        if "join h4" not in self.outputs:
            self.join("h4")

    def driver(self, code: str, timeout: float = 180, token: bool = True, **extra: str) -> dict:
        """Run a driver script on h4 after ``import kiln; kiln.connect(ADDRESS)``; the script
        sets ``out`` (a dict), printed as JSON on its last line and returned."""
        self.join_driver_host()
        script = (f"import json, time, kiln\nADDRESS = {self.address!r}\nout = {{}}\n{code}\n"
                  "print('\\n' + json.dumps(out, default=str))\n")
        r = _check(self.hosts.python("h4", script, timeout=timeout, token=token, **extra))
        return json.loads(r.stdout.strip().splitlines()[-1])


def _check(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, r.args))[-300:]}\n{show(r)}")
    return r


def show(r: subprocess.CompletedProcess) -> str:
    return f"exit {r.returncode}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}"


# -- a long-lived driver on a host, for faults: python tests/netns.py driver ADDRESS -----------
# It reads one JSON command a line on stdin and answers one JSON line on stdout, so that the
# test (outside the hosts) can pull a cable while a call is in flight and read what the call
# returned. A thread records, with wall-clock times, when Ray sees each node die or come back.
class Driver:
    """``Driver(hosts, cluster)`` starts the driver on h4; ``send(cmd)`` / ``recv()``."""

    def __init__(self, hosts: Hosts, cluster: NetnsCluster) -> None:
        cluster.join_driver_host()
        self.proc = subprocess.Popen(
            hosts.argv("h4", sys.executable, "-u", __file__, "driver", cluster.address),
            env=hosts.env("h4"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=open(hosts.root / "h4" / "driver.log", "ab"), text=True)  # noqa: SIM115
        hosts._procs.append(self.proc)
        self._pending = b""
        ready = self.recv(timeout=300)
        assert ready.get("ready"), ready

    def send(self, **cmd: object) -> None:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def recv(self, timeout: float = 300, do: str | None = None) -> dict:
        """The driver's next answer (to the command ``do``, when given: a late answer to an
        earlier question that timed out is skipped, not taken for this one's)."""
        deadline = time.monotonic() + timeout
        while True:
            reply = self._recv_one(max(0.0, deadline - time.monotonic()))
            if do is None or reply.get("do") in (None, do):
                return reply

    def _recv_one(self, timeout: float) -> dict:
        # The pipe is read here, a line at a time from our own buffer: select() on the pipe says
        # nothing of lines already read into a Python buffer, so two answers arriving together
        # must not leave the second one unseen there.
        import os
        import select

        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._pending:
                line, self._pending = self._pending.split(b"\n", 1)
                if line.startswith(b"{"):
                    return json.loads(line)
            if time.monotonic() >= deadline:
                raise AssertionError(f"the driver did not answer within {timeout:.0f} s")
            ready, _, _ = select.select([fd], [], [], 1)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"the driver exited ({self.proc.poll()})")
                self._pending += chunk

    def ask(self, timeout: float = 300, **cmd: object) -> dict:
        self.send(**cmd)
        return self.recv(timeout, do=str(cmd["do"]))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


def _driver_main(address_: str) -> None:  # pragma: no cover - runs on h4
    import faulthandler
    import signal
    import threading

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1`: where it waits

    import ray

    import kiln
    from kiln.bayes._examples import seed_001
    from kiln.cluster import current

    kiln.connect(address_)
    events: list[tuple[float, str, str]] = []

    def watch() -> None:
        last: dict[str, bool] = {}
        names: dict[str, str] = {}  # node id -> kiln name (a dead node lists no resources)
        while True:
            try:
                now: dict[str, bool] = {}
                for n in ray.nodes():
                    name = next((k[len("kiln-node:"):] for k in n.get("Resources") or {}
                                 if k.startswith("kiln-node:")), None)
                    name = names.setdefault(n["NodeID"], name or n["NodeManagerAddress"])
                    now[name] = now.get(name, False) or bool(n["Alive"])
                for name, alive in now.items():
                    if name in last and last[name] != alive:
                        events.append((time.time(), name, "alive" if alive else "dead"))
                last = now
            except Exception as err:  # the head is away: keep watching
                events.append((time.time(), "-", f"watch: {type(err).__name__}"))
                time.sleep(1)
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()

    def where(i: int) -> tuple[int, str]:
        import os
        import socket

        time.sleep(float(os.environ.get("KILN_FAULT_ITEM_S", "0.4")))
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(("10.77.0.1", 9))
        return i, s.getsockname()[0]

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        t0 = time.time()
        out: dict = {"do": cmd["do"], "t0": t0}
        try:
            if cmd["do"] == "sample":
                post = kiln.sample(seed_001(), chains=cmd["chains"], warmup=cmd["warmup"],
                                   draws=cmd["draws"], on=cmd["on"], seed=cmd.get("seed", 0),
                                   progress=False, timeout=cmd.get("sample_timeout"))
                out["chains"] = [float(c["mu"].mean()) for c in post.chains]
                out["draws"] = [int(c["mu"].size) for c in post.chains]
                out["placement"] = [{k: p.get(k) for k in ("node", "chains")} for p in post.placement]
            elif cmd["do"] == "map":
                out["results"] = kiln.map(where, range(cmd["n"]), nodes=cmd["on"], chunksize=1)
            elif cmd["do"] == "call":
                out["result"] = kiln.call(cmd["node"], lambda: "pong")
            elif cmd["do"] == "events":
                out["events"] = events[:]
            elif cmd["do"] == "refresh":
                kiln.connect(address_)
                out["ready"] = sorted({h.node for h in current().agents()})
            out["ok"] = True
        except BaseException as err:  # noqa: BLE001 - reported to the test, typed
            out.update(ok=False, error=type(err).__name__, module=type(err).__module__,
                       message=str(err)[:2000])
        out["t1"] = time.time()
        print(json.dumps(out, default=str), flush=True)


# -- faults: one round of each, shared by tests/test_faults_netns.py and bench/chaos.py ---------
COMPUTE = ["head1", "gpu2", "gpu3"]
VICTIM = ("h2", "gpu2")  # the worker host that fails


@dataclass
class Round:
    """What one fault did: every item asked for came back once, or failed with a typed kiln
    error naming the node; how long Ray took to see the fault, and kiln to finish the work."""

    fault: str
    items: int
    returned: int = 0
    failed_typed: int = 0
    lost: int = 0
    duplicates: int = 0
    detect_s: float | None = None
    recover_s: float | None = None
    back_s: float | None = None  # until the failed host serves again once it returns
    call_s: float | None = None  # the call with the fault, start to end
    baseline_s: float | None = None  # the same call just before, without a fault
    note: str = ""

    @property
    def extra_s(self) -> float | None:
        """What the fault cost the call: its time beyond the same call without a fault."""
        if self.call_s is None or self.baseline_s is None:
            return None
        return self.call_s - self.baseline_s

    def as_dict(self) -> dict:
        return {**self.__dict__, "extra_s": self.extra_s}


def _typed(reply: dict, node: str) -> bool:
    return (reply.get("module", "").startswith("kiln") and node in reply.get("message", ""))


def _detected(driver: Driver, node: str, since: float, wait: float = 20) -> float | None:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        # generous: under load the driver once took over 30 s to answer (a stall not yet
        # explained; `kill -USR1` on the driver dumps its threads)
        events = driver.ask(do="events", timeout=120)["events"]
        dead = [t for t, name, what in events if name == node and what == "dead" and t >= since]
        if dead:
            return dead[0] - since
        time.sleep(0.5)
    return None


def restore(hosts: Hosts, cluster: NetnsCluster, host: str, driver: Driver | None,
            since: float) -> float | None:
    """The failed host comes back (cable in, its node started again with `kiln join`, as its
    operator or systemd would); seconds from ``since`` until a call on it answers."""
    hosts.link(host, up=True)
    hosts.kill(host)  # a node that Ray declared dead does not come back: start it again
    cluster.join(host)
    if driver is None:
        return None
    name = NetnsCluster.WORKERS[host]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        driver.ask(do="refresh", timeout=120)
        if driver.ask(do="call", node=name, timeout=60).get("ok"):
            return time.time() - since
        time.sleep(1)
    return None


def link_down_mid_sample(hosts: Hosts, cluster: NetnsCluster, driver: Driver, seed: int = 0,
                         draws: int = 60000, after: float = 2.0) -> Round:
    host, node = VICTIM
    chains = 6
    r = Round("link down mid-sample", items=chains)
    cmd = dict(do="sample", chains=chains, warmup=500, draws=draws, on=COMPUTE, seed=seed,
               sample_timeout=300)
    base = driver.ask(timeout=400, **cmd)  # warm (compiled) and timed without a fault
    r.baseline_s = base["t1"] - base["t0"] if base.get("ok") else None
    driver.send(**cmd)
    time.sleep(after)
    t_fault = time.time()
    hosts.link(host, up=False)
    reply = driver.recv(timeout=400, do=str(cmd["do"]))
    r.call_s = reply["t1"] - reply["t0"]
    if reply["ok"]:
        r.returned = len(reply["chains"])
        r.duplicates = max(0, r.returned - chains)
        r.lost = max(0, chains - r.returned) + sum(d != draws for d in reply["draws"])
        r.recover_s = reply["t1"] - t_fault
        r.note = json.dumps(reply["placement"])
    else:
        _failed(r, reply, node, chains, t_fault)
    r.detect_s = _detected(driver, node, t_fault)
    r.back_s = restore(hosts, cluster, host, driver, time.time())
    return r


def _failed(r: Round, reply: dict, node: str, count: int, t_fault: float) -> None:
    """A call that failed: with a typed kiln error naming ``node`` (its ``count`` items failed
    as they should), or not (they are lost)."""
    if _typed(reply, node):
        r.failed_typed = count
        r.recover_s = reply["t1"] - t_fault
        r.note = f"{reply['error']}: {reply['message'][:300]}"
    else:
        r.lost = count
        r.note = f"{reply.get('error')}: {reply.get('message', '')[:300]}"


def _map_round(r: Round, reply: dict, n: int, node: str, t_fault: float) -> None:
    if reply["ok"]:
        got = [i for i, _ in reply["results"]]
        r.returned = len(set(got) & set(range(n)))
        r.duplicates = len(got) - len(set(got))
        r.lost = n - r.returned
        if got != list(range(n)):
            r.note = f"out of order or missing: {got}"
        r.recover_s = reply["t1"] - t_fault
    else:
        _failed(r, reply, node, n, t_fault)


def _map_under_fault(r: Round, driver: Driver, n: int, node: str, after: float,
                     fault: Callable[[], None]) -> float:
    """A map of ``n`` items for its baseline, then the same map with ``fault()`` ``after`` s
    into it; fills ``r`` from its reply and returns when the fault began."""
    base = driver.ask(do="map", n=n, on=COMPUTE, timeout=300)
    r.baseline_s = base["t1"] - base["t0"] if base.get("ok") else None
    driver.send(do="map", n=n, on=COMPUTE)
    time.sleep(after)
    t_fault = time.time()
    fault()
    reply = driver.recv(timeout=300, do="map")
    r.call_s = reply["t1"] - reply["t0"]
    _map_round(r, reply, n, node, t_fault)
    return t_fault


def link_down_mid_map(hosts: Hosts, cluster: NetnsCluster, driver: Driver, n: int = 30,
                      after: float = 1.5) -> Round:
    host, node = VICTIM
    r = Round("link down mid-map", items=n)
    t_fault = _map_under_fault(r, driver, n, node, after, lambda: hosts.link(host, up=False))
    r.detect_s = _detected(driver, node, t_fault)
    r.back_s = restore(hosts, cluster, host, driver, time.time())
    return r


def agent_killed_mid_map(hosts: Hosts, cluster: NetnsCluster, driver: Driver, n: int = 30,
                         after: float = 1.5) -> Round:
    host, node = VICTIM
    r = Round("agent SIGKILLed mid-map", items=n)
    agents: list[psutil.Process] = []

    def kill() -> None:
        agents.extend(hosts.processes(host, "ray::Agent"))
        for proc in agents:
            proc.kill()

    _map_under_fault(r, driver, n, node, after, kill)
    if not agents:
        r.note = "no agent process found on the host: " + r.note
    # Kiln learns of an agent's death from the call in flight: the map's reply is when it knew.
    r.detect_s = None
    t = time.time()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if driver.ask(do="call", node=node, timeout=60).get("ok"):
            r.back_s = time.time() - t
            break
        driver.ask(do="refresh", timeout=120)
        time.sleep(0.5)
    return r


LOAD = """
import json, sys, threading, time, httpx
url, key, seconds, workers = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
records, stop = [], time.time() + seconds
def work(w):
    n = 0
    with httpx.Client(headers={"Authorization": "Bearer " + key}, timeout=60) as c:
        while time.time() < stop:
            texts = [f"w{w} r{n} t{j}" for j in range(4)]
            rec = {"id": f"{w}-{n}", "t0": time.time()}
            try:
                r = c.post(url + "/v1/embeddings", json={"input": texts})
                rec["status"] = r.status_code
                body = r.json()
                if r.status_code == 200:
                    rec["n"] = len(body["data"])
                    rec["order"] = [d["index"] for d in body["data"]] == list(range(4))
                else:
                    rec["error"] = json.dumps(body)[:300]
            except Exception as err:
                rec["status"], rec["error"] = None, f"{type(err).__name__}: {err}"[:300]
            rec["t1"] = time.time()
            records.append(rec)
            n += 1
threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(records))
"""


def start_gateway(hosts: Hosts, cluster: NetnsCluster) -> tuple[subprocess.Popen, str, str]:
    """`kiln serve` on h4 at 10.77.0.4:8000 with an API key; returns (process, url, key)."""
    cluster.join_driver_host()
    key = "k" * 32
    (hosts.root / "h4" / "api-key").write_text(key)
    proc = hosts.popen("h4", KILN, "serve", "--host", address("h4"), "--port", 8000,
                       "--api-key-file", hosts.root / "h4" / "api-key", "--address",
                       cluster.address, log="serve.log")
    url = f"http://{address('h4')}:8000"
    up = hosts.python("h4", f"""
import time, httpx
deadline = time.time() + 240
while time.time() < deadline:
    try:
        r = httpx.post("{url}/v1/embeddings", json={{"input": ["warm"]}},
                       headers={{"Authorization": "Bearer {key}"}}, timeout=60)
        if r.status_code == 200:
            break
    except httpx.HTTPError:
        pass
    time.sleep(1)
else:
    raise SystemExit("the gateway did not answer")
""", timeout=300)
    if up.returncode != 0:
        raise AssertionError(show(up) + (hosts.root / "h4" / "serve.log").read_text()[-3000:])
    return proc, url, key


def link_down_mid_gateway_load(hosts: Hosts, cluster: NetnsCluster, driver: Driver, url: str,
                               key: str, seconds: float = 14, after: float = 3) -> Round:
    host, node = VICTIM
    load = subprocess.Popen(hosts.argv("h4", sys.executable, "-c", LOAD, url, key, seconds, 4),
                            env=hosts.env("h4"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    hosts._procs.append(load)
    time.sleep(after)
    t_fault = time.time()
    hosts.link(host, up=False)
    out, err = load.communicate(timeout=seconds + 120)
    records = json.loads(out.strip().splitlines()[-1]) if out.strip() else []
    r = Round("link down mid-gateway load", items=len(records))
    ids = [x["id"] for x in records]
    r.duplicates = len(ids) - len(set(ids))
    ok = [x for x in records if x.get("status") == 200 and x.get("n") == 4 and x.get("order")]
    typed = [x for x in records if x.get("status") in (503, 504) and "error" in x]
    r.returned, r.failed_typed = len(ok), len(typed)
    r.lost = len(records) - len(ok) - len(typed)
    if r.lost:
        r.note = json.dumps([x for x in records if x not in ok and x not in typed][:3])
    if not records:
        r.note = f"the load generator printed nothing: {err[-500:]}"
    in_flight = [x["t1"] for x in records if x["t0"] <= t_fault <= x["t1"]]
    r.recover_s = (max(in_flight) - t_fault) if in_flight else 0.0
    slow_after = [x["t1"] - x["t0"] for x in records if x["t0"] > t_fault]
    if slow_after:
        r.note += f" slowest request after the fault {max(slow_after):.2f} s"
    r.detect_s = _detected(driver, node, t_fault)
    r.back_s = restore(hosts, cluster, host, driver, time.time())
    return r


def head_restart(hosts: Hosts, cluster: NetnsCluster, driver: Driver, n: int = 30,
                 after: float = 1.5) -> tuple[Round, Driver]:
    """The head host crashes mid-map and comes back: `kiln up` again, the nodes `kiln join`
    again (Ray without an external GCS store cannot take old nodes back). Returns a new driver."""
    r = Round("head restart mid-map", items=n)
    driver.send(do="map", n=n, on=COMPUTE)
    time.sleep(after)
    t_fault = time.time()
    hosts.kill("h1")
    try:
        reply = driver.recv(timeout=150, do="map")
        _map_round(r, reply, n, "head1", t_fault)
    except AssertionError as err:  # the driver died or hung: everything in flight is lost
        r.lost, r.note = n, f"driver: {err}"
    driver.close()
    cluster.up()
    for host in ("h2", "h3", "h4"):
        hosts.kill(host)
        cluster.join(host)
    new = Driver(hosts, cluster)
    for name in COMPUTE:
        deadline = time.monotonic() + 120
        while not new.ask(do="call", node=name, timeout=60).get("ok"):
            assert time.monotonic() < deadline, f"{name} does not answer after the restart"
            new.ask(do="refresh", timeout=120)
            time.sleep(0.5)
    r.back_s = time.time() - t_fault
    return r, new


if __name__ == "__main__":
    if sys.argv[1:2] == ["driver"]:
        _driver_main(sys.argv[2])

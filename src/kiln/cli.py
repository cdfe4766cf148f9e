"""The ``kiln`` command: demo | up | join | down | status | doctor | serve.

Long: seven commands with their options, as typer declares them; each command's logic is short
and the shared parts (addresses, tokens, Ray's process arguments) sit above them. Splitting per
command would scatter the option declarations a reader compares side by side.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="kiln: the cluster is the API. Bayesian and ML inference on a Ray cluster.")
console = Console()
err_console = Console(stderr=True)  # errors and notes stay off stdout, so --json stays parseable

Address = Annotated[str | None, typer.Option(
    "--address", envvar="KILN_ADDRESS",
    help="HOST:PORT of a running cluster; none starts the embedded default")]
JsonOut = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="print the ray command instead of running it")]
Block = Annotated[bool, typer.Option("--block", help="stay in the foreground; stopping kiln stops the node")]
Preload = Annotated[str, typer.Option(
    help="capabilities this node's agents make ready as they start, comma-separated: `embed` "
         "loads the default embedding model before the first request (for a gateway's nodes)")]
PreloadTimeout = Annotated[float, typer.Option(
    help="with --preload: seconds `kiln up` waits for the head's agents to start and load what "
         "--preload names before it returns (0: return at once and the first driver starts "
         "them; --block does not wait)")]

NORMAL_SPEC = {"dist": "normal", "mu": 0.0, "sigma": 1.0}

# Set in the environment of the Ray processes that `kiln up` / `kiln join` start (every Ray process
# of the node inherits it), so that `kiln down` stops those and leaves any other Ray alone.
NODE_MARKER = "KILN_CLI_NODE"
# A kiln node name (it becomes part of a Ray resource name and of agent names).
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?")
_AUTH_HELP = ("on each machine that joins, and on each driver, set RAY_AUTH_MODE=token and "
              "RAY_AUTH_TOKEN=<the head's token> (`ray get-auth-token` on the head prints it)")


def _ray_bin() -> str:
    here = Path(sys.executable).with_name("ray")
    return str(here) if here.exists() else (shutil.which("ray") or "ray")


def _fail(message: str, code: int = 1) -> None:
    err_console.print(f"[red]error:[/] {escape(message)}")
    raise typer.Exit(code)


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        _fail(f"--name {name!r}: use letters, digits, '-' and '_' (at most 63, starting and "
              "ending with a letter or digit), e.g. gpu2")


def _connect(address: str | None) -> Any:
    """``kiln.connect(address)``, after two checks that Ray makes slowly or not at all."""
    import kiln

    if address:
        _check_attach(address)
    from ray.exceptions import AuthenticationError

    try:
        return kiln.connect(address)
    except AuthenticationError:  # Ray's, raised before any connection
        _fail(f"the Ray cluster at {address} refused this driver's token: {_AUTH_HELP}.")


def _check_attach(address: str) -> None:
    """Fail at once, saying what to do, when this machine cannot attach to the head at
    ``address``: the head refuses its token (Ray alone retries ~20 s, a warning a second, and
    never names the token), or this machine is not a node of the cluster (Ray runs drivers only on
    its nodes: alone it waits a minute and says "Failed to connect").

    One request to the head's GCS answers both in milliseconds. Anything else that goes wrong here
    is left to ``kiln.connect``, which says what it is.
    """
    host, _, port = address.rpartition(":")
    if not port.isdigit() or "://" in address:
        return
    mode = os.environ.get("RAY_AUTH_MODE", "").lower()
    has_token = bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                     or Path("~/.ray/auth_token").expanduser().exists())
    if mode == "token" and not has_token:
        _fail(f"RAY_AUTH_MODE=token is set but no token is: {_AUTH_HELP}.")
    if not mode and has_token:
        # What ray.init does when a token exists and no mode is set (on the head, say).
        os.environ["RAY_AUTH_MODE"] = mode = "token"
    import socket
    import threading

    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=3).close()
        from ray._raylet import GcsClient
        from ray.exceptions import AuthenticationError
    except (OSError, ImportError):  # nothing listens: kiln.connect says so
        return
    found: dict[str, Any] = {}

    def probe() -> None:
        try:
            gcs = GcsClient(address=address)
            found["nodes"] = {info.node_manager_address
                              for info in gcs.get_all_node_info(timeout=5).values()
                              if info.state == 0}  # ALIVE
        except AuthenticationError as err:
            found["refused"] = err
        except Exception as err:  # noqa: BLE001 - whatever the probe meets, kiln.connect then
            # tries for real and says what is wrong; the probe's own error is only a hint
            logging.getLogger("kiln").debug("probe of %s: %r", address, err)

    with _stderr_to_null():  # Ray's C++ client logs each refusal on fd 2
        t = threading.Thread(target=probe, daemon=True)
        t.start()
        t.join(timeout=8)
    if "refused" in found:
        said = ("this machine sends no token" if mode != "token" else
                "the token this machine sends (RAY_AUTH_TOKEN) is not the head's")
        _fail(f"could not attach to the Ray cluster at {address}: it uses token authentication "
              f"and {said}. {_AUTH_HELP[0].upper()}{_AUTH_HELP[1:]}.")
    mine = _local_addresses()
    if found.get("nodes") and mine and not found["nodes"] & mine:
        _fail(f"could not attach to the Ray cluster at {address}: this machine is not one of its "
              f"nodes ({', '.join(sorted(found['nodes']))}), and Ray runs drivers (and `kiln "
              f"status`, `kiln serve`, a notebook) only on its own nodes. Run `kiln join "
              f"{address} --name NAME` on this machine first.")


def _local_addresses() -> set[str]:
    import psutil

    return {a.address for addrs in psutil.net_if_addrs().values() for a in addrs
            if a.family.name in ("AF_INET", "AF_INET6")}


@contextlib.contextmanager
def _stderr_to_null():
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


@app.command()
def demo(address: Address = None, as_json: JsonOut = False,
         seed: Annotated[int, typer.Option(help="random seed")] = 1) -> None:
    """A normal model sampled on every node, draws combined; a 4-chain Bayesian model with its pooled posterior."""
    with _quiet_libraries():
        out = _run_demo(address, seed)
    if as_json:
        print(json.dumps(out, indent=2))
    else:
        _print_demo(out)


def _run_demo(address: str | None, seed: int) -> dict[str, Any]:
    import kiln
    from kiln.errors import KilnError

    steps: dict[str, float] = {}
    started = time.perf_counter()
    try:
        cluster = _connect(address)
        steps["connect"] = time.perf_counter() - started
        nodes = sorted({h.node for h in cluster.agents()})
        if not nodes:
            _fail("no ready agent; run `kiln doctor` to see why")
        t = time.perf_counter()
        per_node = [kiln.dispatch(n, NORMAL_SPEC, num_warmup=200, num_samples=200, seed=seed + i)
                    for i, n in enumerate(nodes)]
        both = kiln.combine(per_node)
        steps["normal"] = time.perf_counter() - t
        t = time.perf_counter()
        post = _four_chains(kiln, nodes[0], seed)
        steps["model"] = time.perf_counter() - t
        where = {"address": "embedded" if address is None else address, "nodes": nodes,
                 "devices": sorted({r.device for r in per_node})}
    except KilnError as err:
        _fail(str(err))
    finally:
        kiln.shutdown(keep_agents=True)
    return {
        "where": where,
        "normal": {
            "nodes": [{"node": r.node, "device": r.device, "n": len(r.samples["x"]), "mean": r.mean(),
                       "sd": r.std(), "total_s": r.timing.get("total_s"),
                       "round_trip_s": r.timing.get("round_trip_s")} for r in per_node],
            "combined": {"n": len(both.samples["x"]), "mean": both.mean(), "sd": both.std()},
        },
        "model": post,
        "seconds": {k: round(v, 3) for k, v in steps.items()},
    }


def _four_chains(kiln: Any, node: str, seed: int) -> dict[str, Any]:
    from kiln.bayes._examples import seed_001

    post = kiln.sample(seed_001(), chains=4, warmup=500, draws=1000, on=node, seed=seed, progress=False)
    summary = post.summary(round_to="none")
    return {
        "node": node,
        "chains": [{"mu": float(c["mu"].mean()), "sigma": float(c["sigma"].mean())} for c in post.chains],
        "pooled": {v: {"mean": float(summary.loc[v, "mean"]), "sd": float(summary.loc[v, "sd"]),
                       "r_hat": float(summary.loc[v, "r_hat"]), "ess_bulk": float(summary.loc[v, "ess_bulk"])}
                   for v in ("mu", "sigma")},
        "n": int(post["mu"].size),
    }


def _print_demo(out: dict[str, Any]) -> None:
    # Headings are plain lines, not table titles: a title wider than its table wraps mid-phrase
    # at 80 columns. Every line here fits in 80 columns, on a terminal or piped.
    console.print("[bold]A normal model sampled on every node, draws combined[/]")
    console.print("  kiln.dispatch(node, {'dist': 'normal', 'mu': 0.0, 'sigma': 1.0},")
    console.print("                num_warmup=200, num_samples=200)")
    t = Table()
    for col in ("node", "device", "draws", "mean", "sd", "on agent", "round trip"):
        t.add_column(col)
    for r in out["normal"]["nodes"]:
        t.add_row(escape(r["node"]), escape(r["device"]), str(r["n"]), f"{r['mean']:.3f}",
                  f"{r['sd']:.3f}", _ms(r["total_s"]), _ms(r["round_trip_s"]))
    console.print(t)
    c = out["normal"]["combined"]
    console.print(f"Combined {c['n']} draws: mean={c['mean']:.3f} sd={c['sd']:.3f}\n")
    s = out["model"]
    console.print("[bold]A 4-chain Bayesian model with its pooled posterior[/]")
    console.print("  mu ~ Normal(0, 10), sigma ~ HalfNormal(2), 10 observations;")
    console.print(f"  4 chains x (500 warmup + 1000 draws) on {escape(s['node'])}")
    t = Table()
    for col in ("chain", "mu", "sigma"):
        t.add_column(col)
    for i, ch in enumerate(s["chains"], 1):
        t.add_row(str(i), f"{ch['mu']:.3f}", f"{ch['sigma']:.3f}")
    console.print(t)
    p = s["pooled"]
    console.print(f"Pooled posterior ({s['n']} draws across {len(s['chains'])} chains):\n"
                  f"  mu:    {p['mu']['mean']:.3f} ± {p['mu']['sd']:.3f}  (r_hat {p['mu']['r_hat']:.3f}, "
                  f"ess {p['mu']['ess_bulk']:.0f})\n"
                  f"  sigma: {p['sigma']['mean']:.3f} ± {p['sigma']['sd']:.3f}  (r_hat "
                  f"{p['sigma']['r_hat']:.3f}, ess {p['sigma']['ess_bulk']:.0f})\n")
    w, sec = out["where"], out["seconds"]
    place = "local Ray" if w["address"] == "embedded" else w["address"]
    console.print(escape(f"Ran on {', '.join(w['nodes'])} ({', '.join(w['devices'])}, {place}): "
                         f"connect {sec['connect']:.1f} s, normal {sec['normal']:.1f} s, "
                         f"4 chains {sec['model']:.1f} s"))


def _ms(seconds: Any) -> str:
    return f"{seconds * 1000:.0f} ms" if isinstance(seconds, (int, float)) else "-"


@contextlib.contextmanager
def _quiet_libraries():
    """Keep the demo's output to kiln's own: other libraries' FutureWarnings and Ray's notices
    (its token-authentication notice on every local start) stay off the user's terminal; kiln's
    own warnings still show, and so does ArviZ's notice of its refactor (below)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("default", module="kiln")
        # ArviZ 0.23 says, once a day per user, that its 1.x API will differ. kiln's posterior
        # summaries, ESS, R-hat, LOO/WAIC and plots use the 0.23 API, and ArviZ 1.x needs
        # Python >= 3.12 (kiln runs on 3.11), so kiln cannot move yet: the notice is true of
        # kiln, and a user who calls ArviZ on kiln's InferenceData should see it.
        warnings.filterwarnings("default", category=FutureWarning, module="arviz")
        import ray  # noqa: F401 - Ray sets its loggers up when imported: quiet them after

        ray_log = logging.getLogger("ray")
        level = ray_log.level
        ray_log.setLevel(logging.ERROR)
        try:
            yield
        finally:
            ray_log.setLevel(level)


# What `kiln up` / `kiln join` change in Ray's defaults, and why (docs/cluster.md lists every
# socket a node opens and where it listens).
#
# Node death detection: the head's GCS checks each raylet's health every period; a node that fails
# `threshold` checks in a row, each waiting up to `timeout`, is marked dead. A host that drops off
# the network is therefore declared dead at most period + threshold x (timeout + period)
# = 1 + 3 x 2.5 = 8.5 s later (Ray's defaults: 3 s, 10 s, 5: over a minute). Set one of these in
# the environment of `kiln up` to choose another value.
HEALTH_CHECK = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1500",
                "RAY_health_check_failure_threshold": "3"}
# Ray's per-node Prometheus exporter listens on every interface, without authentication; kiln
# does not use it (the gateway has its own /metrics).
NODE_ENV = {"RAY_enable_metrics_collection": "0"}
CLIENT_PORT = 10001  # Ray's client server (ray://HOST:10001), Ray's default
WORKER_PORTS = (10002, 19999)  # Ray's default range for its workers' gRPC servers


def _worker_ports(fixed: list[int]) -> tuple[int, int]:
    """A worker-port range of Ray's default size that none of the ``fixed`` ports falls in
    (Ray refuses to start when, say, --port 16379 lies in 10002-19999)."""
    low, high = WORKER_PORTS
    while any(low <= p <= high for p in fixed):
        low, high = low + 10000, high + 10000
    return low, high


def _port_taken(host: str, port: int) -> str | None:
    """Why ``port`` cannot be bound where Ray will bind it (None when it can). Ray's servers bind
    ``host`` when it is loopback and every interface otherwise."""
    import socket

    where = host if host in ("127.0.0.1", "localhost") else "0.0.0.0"
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT is not "taken"
        try:
            s.bind((where, port))
        except OSError as err:
            return err.strerror or str(err)
    return None


@app.command()
def up(host: Annotated[str, typer.Option(
           help="this machine's address that the other machines reach. The default, 127.0.0.1, "
                "keeps every port on loopback: this machine only")
       ] = "127.0.0.1",
       port: Annotated[int, typer.Option(help="the head's GCS port")] = 6379,
       client_port: Annotated[int, typer.Option(
           help="Ray's client server (ray://HOST:PORT), bound to --host and loopback")
       ] = CLIENT_PORT,
       name: Annotated[str | None, typer.Option(help="this node's kiln name (default: the host's)")] = None,
       preload: Preload = "", preload_timeout: PreloadTimeout = 120.0, block: Block = False,
       dry_run: DryRun = False) -> None:
    """Start a Ray head node named for kiln and print the join command; with --preload, its
    agents are started and warm when it returns."""
    from kiln.cluster import NODE_RESOURCE, default_node_name

    node = default_node_name() if name is None else name  # --name '' is an error
    _check_name(node)
    if preload_timeout < 0:  # every argument before anything starts
        _fail(f"--preload-timeout {preload_timeout:g}: use 0 or more seconds")
    if port == client_port:
        _fail(f"--port and --client-port are both {port}: give them different ports")
    low, high = _worker_ports([port, client_port])
    cmd = [_ray_bin(), "start", "--head", f"--node-ip-address={host}", f"--port={port}",
           f"--ray-client-server-port={client_port}", f"--min-worker-port={low}",
           f"--max-worker-port={high}", "--include-dashboard=false", "--no-monitor",
           "--disable-usage-stats", f"--resources={json.dumps({NODE_RESOURCE + node: 1})}"]
    if not dry_run:
        for what, p in (("--port", port), ("--client-port", client_port)):
            why = _port_taken(host, p)
            if why:
                _fail(f"{what} {p}: port {p} is taken on this machine ({why}); stop what uses it "
                      f"or choose another port ({what} PORT)")
    mode = os.environ.get("RAY_AUTH_MODE", "").lower()
    auth_on = mode in ("", "token")
    if not dry_run and not mode:
        # `ray start --head` turns token authentication on only when a token already exists on
        # this machine: make one (as `ray.init()` does for a local cluster) so that it always is.
        made = subprocess.run([_ray_bin(), "get-auth-token", "--generate"], capture_output=True)
        auth_on = made.returncode == 0
    auth_line = (f"Token authentication is on: {_AUTH_HELP}." if auth_on else
                 "Token authentication is OFF: anyone who reaches the port can run code here.")
    where = escape(f"{host}:{port}")
    banner = (f"kiln head [bold]{node}[/] at {where}. To add a node:\n"
              f"  kiln join {where} --name gpu2\n"
              + ("(127.0.0.1 is this machine only: give --host this machine's address for the "
                 "others.)\n" if host in ("127.0.0.1", "localhost") else "")
              + f"{escape(auth_line)}\nFrom a notebook: kiln.connect(\"{where}\").")
    env = {**NODE_ENV, **HEALTH_CHECK, **_preload_env(preload)}
    _run(cmd, dry_run, block, marker=node, banner=banner, env=env)
    if not dry_run and not block:
        _await_listening(host, client_port, "Ray's client server (ray://)")
    if "KILN_AGENT_PRELOAD" in env and preload_timeout and not dry_run:
        _warm(f"{host}:{port}", node, preload_timeout, auth_on, what="the head")


def _await_listening(host: str, port: int, what: str, timeout: float = 30.0) -> None:
    """Return once ``port`` listens. ``ray start`` returns before its client server does: that
    is a process of its own, and on a loaded 2-core machine it was not yet listening when
    `kiln up` returned, so a ray:// client started right after was refused."""
    deadline = time.monotonic() + timeout
    while _port_taken(host, port) is None:  # bindable: nobody listens there yet
        if time.monotonic() > deadline:
            console.print(escape(f"{what} is not listening on port {port} after {timeout:g} s; "
                                 "its clients may have to wait for it."))
            return
        time.sleep(0.2)


def _warm(address: str, node: str, timeout: float, auth_on: bool, what: str) -> None:
    """Start the new node's agents and wait until they are warm (``kiln._cli_warm``, in a
    process of its own); the node runs whatever happens, and a failure here says so."""
    started = time.monotonic()
    env = {**os.environ, **({"RAY_AUTH_MODE": "token"} if auth_on else {})}
    problems: list[str] = []
    try:
        r = subprocess.run([sys.executable, "-m", "kiln._cli_warm", address, node, str(timeout)],
                           env=env, capture_output=True, text=True, timeout=timeout + 120)
        out = json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else {}
        warm, problems = out.get("warm", []), out.get("problems", [])
        if not out:
            tail = "\n".join(r.stderr.strip().splitlines()[-8:])
            problems = [f"starting them failed (exit {r.returncode}):\n{tail}"]
    except subprocess.TimeoutExpired:
        warm, problems = [], [f"they did not start within {timeout + 120:g} s"]
    if problems:
        _fail(f"{what} is up, but its agents are not ready to serve: {'; '.join(problems)}. "
              f"`kiln doctor --address {address}` shows the checks; `kiln down` stops "
              f"{'it' if what == 'the head' else 'the node'}")
    console.print(escape(f"Agents warm ({', '.join(warm)}) in {time.monotonic() - started:.1f} s."))


def _preload_env(preload: str) -> dict[str, str]:
    """KILN_AGENT_PRELOAD for the node's processes (its agents inherit it), checked here."""
    from kiln._protocol import CAPABILITIES, capabilities_named

    known, unknown = capabilities_named(preload)
    if unknown:
        _fail(f"--preload {preload}: unknown {', '.join(unknown)}; one of {', '.join(CAPABILITIES)}")
    return {"KILN_AGENT_PRELOAD": ",".join(known)} if known else {}


@app.command()
def join(address: Annotated[str, typer.Argument(help="HEAD_HOST:PORT")],
         name: Annotated[str, typer.Option(help="this node's kiln name, e.g. gpu2")],
         num_gpus: Annotated[int | None, typer.Option(help="GPUs to offer (default: all)")] = None,
         preload: Preload = "", preload_timeout: PreloadTimeout = 120.0, block: Block = False,
         dry_run: DryRun = False) -> None:
    """Start a Ray worker node carrying a kiln name and join it to a head; with --preload, its
    agents are started and warm when it returns."""
    from kiln.cluster import NODE_RESOURCE

    _check_name(name)
    if preload_timeout < 0:
        _fail(f"--preload-timeout {preload_timeout:g}: use 0 or more seconds")
    head_port = address.rpartition(":")[2]
    low, high = _worker_ports([int(head_port)] if head_port.isdigit() else [])
    cmd = [_ray_bin(), "start", f"--address={address}", f"--min-worker-port={low}",
           f"--max-worker-port={high}", "--disable-usage-stats",
           f"--resources={json.dumps({NODE_RESOURCE + name: 1})}"]
    if num_gpus is not None:
        cmd.append(f"--num-gpus={num_gpus}")
    env = {**NODE_ENV, **_preload_env(preload)}
    _run(cmd, dry_run, block, marker=name, env=env, banner=None if dry_run else
         f"node [bold]{name}[/] {'joining' if block else 'joined'} {escape(address)}")
    if "KILN_AGENT_PRELOAD" in env and preload_timeout and not dry_run:
        # the token, where the cluster has one, is in this shell's RAY_AUTH_* (the banner of
        # `kiln up` says so), and the warm-up's process inherits it
        _warm(address, name, preload_timeout, auth_on=False, what=f"node {name}")


@app.command()
def down(all_ray: Annotated[bool, typer.Option(
             "--all", help="run `ray stop` instead: EVERY Ray process on this machine, kiln's or not")
         ] = False,
         grace: Annotated[float, typer.Option(help="seconds between SIGTERM and SIGKILL")] = 10.0,
         dry_run: DryRun = False) -> None:
    """Stop the Ray nodes that `kiln up` / `kiln join` started on this machine (other Ray stays)."""
    if all_ray:
        _run([_ray_bin(), "stop"], dry_run)
        return
    found = _cli_node_processes()
    if not found:
        err_console.print("no node started by `kiln up` / `kiln join` runs on this machine")
        return
    if dry_run:
        for proc, node in found:
            print(f"{proc.pid}\t{node}\t{shlex.join(_cmdline(proc))[:160]}")
        return
    alive = _terminate([p for p, _ in found], grace)
    if alive:
        _fail(f"could not stop {len(alive)} process(es): {', '.join(str(p.pid) for p in alive)}")
    console.print(f"stopped kiln node(s) {', '.join(sorted({n for _, n in found}))} "
                  f"({len(found)} processes)")


def _cmdline(proc: Any) -> list[str]:
    import psutil

    try:
        return [a for a in proc.cmdline() if a]  # a renamed process pads its title with ''
    except psutil.Error:  # gone, a zombie, or another user's: not one of ours to stop
        return []


def _cli_node_processes() -> list[tuple[Any, str]]:
    """(process, node name) for every process of a node that `kiln up` / `kiln join` started.

    Those carry NODE_MARKER in their environment; their children too, unless they renamed
    themselves (``ray::DashboardAgent`` overwrites its environment with its title), so the
    children of a marked process count as well. Only processes in this process's network
    namespace count: containers (or tests' namespaces) on one machine are other hosts.
    """
    import psutil

    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    here = _net_namespace("self")
    found: dict[int, tuple[Any, str]] = {}
    for proc in psutil.process_iter():
        try:
            node = proc.environ().get(NODE_MARKER)
            if node and proc.pid not in mine and _net_namespace(proc.pid) == here:
                found[proc.pid] = (proc, node)
                for child in proc.children(recursive=True):
                    found.setdefault(child.pid, (child, node))
        except (psutil.Error, OSError):  # another user's process, a zombie, or gone
            continue
    return [found[pid] for pid in sorted(found) if pid not in mine]


def _net_namespace(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:  # not Linux, or not ours to read: one namespace as far as we can tell
        return None


def _terminate(procs: list[Any], grace: float) -> list[Any]:
    """Stop raylets first, GCS servers last (as `ray stop` does, so none waits on a dead peer):
    SIGTERM each group, SIGKILL what is left of it after its share of ``grace``. Returns what
    still runs."""
    import psutil

    def name(proc: Any) -> str:
        try:
            return proc.name()
        except psutil.Error:
            return ""

    first = [p for p in procs if name(p) == "raylet"]
    last = [p for p in procs if name(p) == "gcs_server"]
    middle = [p for p in procs if p not in first and p not in last]
    still = []
    for group in (first, middle, last):
        for proc in group:
            try:
                proc.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(group, timeout=grace / 3)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        still += psutil.wait_procs(alive, timeout=5)[1]
    return still


def _run(cmd: list[str], dry_run: bool, block: bool = False, marker: str | None = None,
         banner: str | None = None, env: dict[str, str] | None = None) -> None:
    """Run a `ray` command; ``marker`` names the kiln node it starts (see NODE_MARKER)."""
    if block:
        cmd = [*cmd, "--block"]
    if dry_run:
        if banner:
            err_console.print(banner)
        # The exact command with the variables kiln sets, quoted so that it pastes into a shell.
        print(shlex.join([f"{k}={v}" for k, v in (env or {}).items() if k not in os.environ]
                         + cmd))
        return
    # Values the user set in the environment win over kiln's defaults.
    env = {**(env or {}), **os.environ, **({NODE_MARKER: marker} if marker else {})}
    if block:
        # Become `ray start --block`: stopping this process (Ctrl-C, SIGTERM) stops the node.
        if banner:
            console.print(banner)
        sys.stdout.flush()
        os.execve(cmd[0], cmd, env)
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        out = "\n".join((proc.stderr.strip() or proc.stdout.strip()).splitlines()[-12:])
        hint = ""
        if re.search(r"auth|token", out, re.IGNORECASE):
            hint = f"\nThe cluster uses token authentication: {_AUTH_HELP}."
        _fail(f"{shlex.join(cmd[:3])} failed after {time.monotonic() - started:.0f} s:\n{out}{hint}",
              proc.returncode)
    if banner:
        console.print(banner)


@app.command()
def status(address: Address = None, as_json: JsonOut = False) -> None:
    """Every node: name, address, state, agents, GPUs, versions."""
    import kiln
    from kiln._report import nodes_table
    from kiln.errors import KilnError

    try:
        cluster = _connect(address)
    except KilnError as err:
        _fail(str(err))
    nodes = cluster.nodes()
    if as_json:
        print(json.dumps([n.as_dict() for n in nodes], indent=2, default=str))
    else:
        console.print(nodes_table(nodes))
    kiln.shutdown(keep_agents=True)


@app.command()
def doctor(address: Address = None, as_json: JsonOut = False) -> None:
    """Every agent's start-up checks, and the KILN_* settings; exits 1 if any check failed."""
    import kiln
    from kiln._report import checks_table, settings_table
    from kiln._settings import rows
    from kiln.errors import KilnError

    try:
        settings = rows()
        cluster = _connect(address)
    except KilnError as err:
        _fail(str(err))
    nodes = cluster.nodes()
    failed = [a for n in nodes if n.alive for a in n.agents if a.state != "ready"]
    if as_json:
        print(json.dumps({"ok": not failed, "nodes": [n.as_dict() for n in nodes],
                          "settings": [dict(zip(("variable", "value", "default", "description"),
                                                r, strict=True)) for r in settings]},
                         indent=2, default=str))
    else:
        console.print(checks_table(nodes))
        console.print(settings_table(settings))
        console.print("[green]all checks passed[/]" if not failed
                      else f"[red]{len(failed)} agent(s) refused to start[/]")
        for a in failed:
            console.print(f"  {escape(a.name)}: "
                          + (f"the {escape(a.check)} check failed" if a.check else escape(a.state)))
    kiln.shutdown(keep_agents=True)
    raise typer.Exit(1 if failed else 0)


@app.command()
def serve(host: Annotated[str, typer.Option(
              help="address to bind; anything but loopback needs --api-key-file")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="port")] = 8000,
          strategy: Annotated[str, typer.Option(
              help="round_robin | least_loaded | consistent_hash")] = "round_robin",
          api_key_file: Annotated[Path | None, typer.Option(
              help="file holding the Bearer API key")] = None,
          address: Address = None,
          fallback: Annotated[str, typer.Option(
              help="on: encode in the gateway when no agent can (model loaded at start); "
                   "off: answer 503")] = "on",
          allow_no_cluster: Annotated[bool, typer.Option(
              help="start even when the cluster does not answer; attach when it does")] = False,
          allow_public_without_key: Annotated[bool, typer.Option(
              help="serve a non-loopback --host with no API key (anyone who reaches it may "
                   "use it)")] = False,
          timeout: Annotated[float, typer.Option(
              help="seconds a request may take in all, across every retry")] = 30.0,
          retries: Annotated[int, typer.Option(help="other agents to try after one fails")] = 2,
          max_texts: Annotated[int, typer.Option(help="texts per request")] = 2048,
          max_body_bytes: Annotated[int, typer.Option(help="request body limit")] = 8 * 2**20,
          max_inflight: Annotated[int, typer.Option(
              help="requests served at once; more get 503 + Retry-After")] = 256,
          workers: Annotated[int, typer.Option(
              help="worker processes sharing the port (more than 1 needs --address)")] = 1,
          timeout_keep_alive: Annotated[float, typer.Option(
              help="close an idle keep-alive connection after this many seconds")] = 5.0,
          timeout_header: Annotated[float, typer.Option(
              help="close a connection whose request headers take longer")] = 10.0,
          timeout_body: Annotated[float, typer.Option(
              help="answer 408 to a body that takes longer to arrive")] = 30.0,
          timeout_graceful_shutdown: Annotated[float, typer.Option(
              help="seconds to finish requests in flight on shutdown")] = 30.0,
          limit_concurrency: Annotated[int | None, typer.Option(
              help="uvicorn's: connections + tasks before new requests get 503")] = None,
          limit_max_requests: Annotated[int | None, typer.Option(
              help="uvicorn's: a worker restarts after this many requests")] = None,
          max_connections: Annotated[int | None, typer.Option(
              help="open connections per worker; at the cap the oldest idle ones are closed "
                   "(default: below the open-file limit)")] = None,
          backlog: Annotated[int, typer.Option(help="the listening socket's backlog")] = 2048,
          http: Annotated[str, typer.Option(
              help="uvicorn's HTTP parser: auto (httptools where installed), httptools, h11")
          ] = "auto",
          loop: Annotated[str, typer.Option(
              help="uvicorn's event loop: auto (uvloop where installed), uvloop, asyncio")
          ] = "auto",
          h11_max_incomplete_event_size: Annotated[int | None, typer.Option(
              help="uvicorn's: bytes of request line and headers at most")] = None,
          root_path: Annotated[str, typer.Option(help="uvicorn's: behind a path prefix")] = "",
          proxy_headers: Annotated[bool, typer.Option(
              help="uvicorn's: trust X-Forwarded-* from --forwarded-allow-ips")] = False,
          forwarded_allow_ips: Annotated[str | None, typer.Option(
              help="uvicorn's: proxies whose X-Forwarded-* are trusted")] = None,
          ssl_keyfile: Annotated[str | None, typer.Option(help="TLS key file")] = None,
          ssl_certfile: Annotated[str | None, typer.Option(help="TLS certificate file")] = None,
          log_level: Annotated[str, typer.Option(
              help="critical | error | warning | info | debug | trace")] = "info",
          access_log: Annotated[bool, typer.Option(help="log every request")] = False) -> None:
    """The HTTP gateway: /infer, /infer/parallel, /v1/embeddings, /v1/models, /cluster,
    /metrics, /healthz, /readyz. See docs/gateway.md for running it in production."""
    from kiln.errors import GatewayError
    from kiln.serve._options import ServeOptions
    from kiln.serve._supervisor import serve as supervise

    def fail(message: str) -> None:
        # One line whatever the terminal's width: an operator greps for it in a unit's log.
        err_console.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)
        raise typer.Exit(1)

    if fallback not in ("on", "off"):
        fail(f"--fallback {fallback!r}: use on or off")
    options = ServeOptions(
        host=host, port=port, address=address, strategy=strategy,
        api_key_file=str(api_key_file) if api_key_file else None,
        allow_public_without_key=allow_public_without_key, fallback=fallback == "on",
        allow_no_cluster=allow_no_cluster, timeout=timeout, retries=retries,
        max_texts=max_texts, max_body_bytes=max_body_bytes, max_inflight=max_inflight,
        workers=workers, timeout_keep_alive=timeout_keep_alive, timeout_header=timeout_header,
        timeout_body=timeout_body, timeout_graceful_shutdown=timeout_graceful_shutdown,
        limit_concurrency=limit_concurrency, limit_max_requests=limit_max_requests,
        max_connections=max_connections, backlog=backlog, http=http, loop=loop,
        h11_max_incomplete_event_size=h11_max_incomplete_event_size, root_path=root_path,
        proxy_headers=proxy_headers, forwarded_allow_ips=forwarded_allow_ips,
        ssl_keyfile=ssl_keyfile, ssl_certfile=ssl_certfile, log_level=log_level,
        access_log=access_log)
    try:
        options.check()  # every argument, before anything connects
        supervise(options)
    except GatewayError as err:
        fail(str(err))


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""The ``kiln`` command: demo | up | join | down | status | doctor | serve."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
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

SEED_000_SPEC = {"dist": "normal", "mu": 0.0, "sigma": 1.0}

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


@app.command()
def demo(address: Address = None, as_json: JsonOut = False,
         seed: Annotated[int, typer.Option(help="random seed")] = 1) -> None:
    """Seed 000 (one call per node, combined draws) and seed 001 (4 chains on a node)."""
    import kiln
    from kiln.errors import KilnError

    try:
        cluster = kiln.connect(address)
        nodes = sorted({h.node for h in cluster.agents()})
        if not nodes:
            _fail("no ready agent; run `kiln doctor` to see why")
        per_node = [kiln.dispatch(n, SEED_000_SPEC, num_warmup=200, num_samples=200, seed=seed + i)
                    for i, n in enumerate(nodes)]
        both = kiln.combine(per_node)
        post = _seed_001(kiln, nodes[0], seed)
    except KilnError as err:
        _fail(str(err))
    out = {
        "seed_000": {
            "nodes": [{"node": r.node, "device": r.device, "n": len(r.samples["x"]), "mean": r.mean(),
                       "sd": r.std(), "total_s": r.timing.get("total_s"),
                       "round_trip_s": r.timing.get("round_trip_s")} for r in per_node],
            "combined": {"n": len(both.samples["x"]), "mean": both.mean(), "sd": both.std()},
        },
        "seed_001": post,
    }
    if as_json:
        print(json.dumps(out, indent=2))
    else:
        _print_demo(out)
    kiln.shutdown()


def _seed_001(kiln: Any, node: str, seed: int) -> dict[str, Any]:
    from kiln.bayes.examples import seed_001

    post = kiln.sample(seed_001(), chains=4, warmup=500, draws=1000, on=node, seed=seed, progress=False)
    summary = post.summary(round_to="none")
    return {
        "node": node,
        "chains": [{"mu": float(c["mu"].mean()), "sigma": float(c["sigma"].mean())} for c in post.chains],
        "pooled": {v: {"mean": float(summary.loc[v, "mean"]), "sd": float(summary.loc[v, "sd"]),
                       "r_hat": float(summary.loc[v, "r_hat"]), "ess_bulk": float(summary.loc[v, "ess_bulk"])}
                   for v in ("mu", "sigma")},
        "n": int(post["mu"].size),
        "placement": [{k: v for k, v in p.items() if k in ("chains", "node", "device", "seconds")}
                      for p in getattr(post, "placement", [])] if isinstance(getattr(post, "placement", None), list) else str(getattr(post, "placement", "")),
    }


def _print_demo(out: dict[str, Any]) -> None:
    t = Table(title="seed 000: kiln.dispatch(node, {'dist': 'normal', 'mu': 0.0, 'sigma': 1.0}, "
                    "num_warmup=200, num_samples=200)")
    for col in ("node", "device", "samples", "mean", "sd", "on agent", "round trip"):
        t.add_column(col)
    for r in out["seed_000"]["nodes"]:
        t.add_row(r["node"], r["device"], str(r["n"]), f"{r['mean']:.3f}", f"{r['sd']:.3f}",
                  f"{r['total_s'] * 1000:.0f} ms", f"{r['round_trip_s'] * 1000:.0f} ms")
    c = out["seed_000"]["combined"]
    console.print(t)
    console.print(f"Combined {c['n']} samples: mean={c['mean']:.3f} sd={c['sd']:.3f}\n")
    s = out["seed_001"]
    t = Table(title=f"seed 001: 4 chains x (500 warmup + 1000 draws) on {s['node']}")
    for col in ("chain", "mu", "sigma"):
        t.add_column(col)
    for i, ch in enumerate(s["chains"], 1):
        t.add_row(str(i), f"{ch['mu']:.3f}", f"{ch['sigma']:.3f}")
    console.print(t)
    p = s["pooled"]
    console.print(f"Pooled posterior ({s['n']} samples across {len(s['chains'])} chains):\n"
                  f"  mu:    {p['mu']['mean']:.3f} ± {p['mu']['sd']:.3f}  (r_hat {p['mu']['r_hat']:.3f}, "
                  f"ess {p['mu']['ess_bulk']:.0f})\n"
                  f"  sigma: {p['sigma']['mean']:.3f} ± {p['sigma']['sd']:.3f}  (r_hat "
                  f"{p['sigma']['r_hat']:.3f}, ess {p['sigma']['ess_bulk']:.0f})")


@app.command()
def up(host: Annotated[str, typer.Option(
           help="address the head advertises. Ray resolves 127.0.0.1 to this machine's address and "
                "its servers listen on every interface: keep the ports firewalled, token auth on")
       ] = "127.0.0.1",
       port: Annotated[int, typer.Option(help="the head's GCS port")] = 6379,
       name: Annotated[str | None, typer.Option(help="this node's kiln name (default: the host's)")] = None,
       block: Block = False, dry_run: DryRun = False) -> None:
    """Start a Ray head node named for kiln and print the join command."""
    from kiln.cluster import NODE_RESOURCE, default_node_name

    node = default_node_name() if name is None else name  # --name '' is an error
    _check_name(node)
    cmd = [_ray_bin(), "start", "--head", f"--node-ip-address={host}", f"--port={port}",
           "--include-dashboard=false", f"--resources={json.dumps({NODE_RESOURCE + node: 1})}"]
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
    _run(cmd, dry_run, block, marker=node, banner=banner)


@app.command()
def join(address: Annotated[str, typer.Argument(help="HEAD_HOST:PORT")],
         name: Annotated[str, typer.Option(help="this node's kiln name, e.g. gpu2")],
         num_gpus: Annotated[int | None, typer.Option(help="GPUs to offer (default: all)")] = None,
         block: Block = False, dry_run: DryRun = False) -> None:
    """Start a Ray worker node carrying a kiln name and join it to a head."""
    from kiln.cluster import NODE_RESOURCE

    _check_name(name)
    cmd = [_ray_bin(), "start", f"--address={address}",
           f"--resources={json.dumps({NODE_RESOURCE + name: 1})}"]
    if num_gpus is not None:
        cmd.append(f"--num-gpus={num_gpus}")
    _run(cmd, dry_run, block, marker=name, banner=None if dry_run else
         f"node [bold]{name}[/] {'joining' if block else 'joined'} {escape(address)}")


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
    try:
        return [a for a in proc.cmdline() if a]  # a renamed process pads its title with ''
    except Exception:
        return []


def _cli_node_processes() -> list[tuple[Any, str]]:
    """(process, node name) for every process of a node that `kiln up` / `kiln join` started.

    Those carry NODE_MARKER in their environment; their children too, unless they renamed
    themselves (``ray::DashboardAgent`` overwrites its environment with its title), so the
    children of a marked process count as well.
    """
    import psutil

    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    found: dict[int, tuple[Any, str]] = {}
    for proc in psutil.process_iter():
        try:
            node = proc.environ().get(NODE_MARKER)
            if node and proc.pid not in mine:
                found[proc.pid] = (proc, node)
                for child in proc.children(recursive=True):
                    found.setdefault(child.pid, (child, node))
        except (psutil.Error, OSError):  # another user's process, a zombie, or gone
            continue
    return [found[pid] for pid in sorted(found) if pid not in mine]


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
         banner: str | None = None) -> None:
    """Run a `ray` command; ``marker`` names the kiln node it starts (see NODE_MARKER)."""
    if block:
        cmd = [*cmd, "--block"]
    if dry_run:
        if banner:
            err_console.print(banner)
        print(shlex.join(cmd))  # the exact command, quoted so that it pastes into a shell
        return
    env = {**os.environ, **({NODE_MARKER: marker} if marker else {})}
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
    from kiln.errors import KilnError
    from kiln.report import nodes_table

    try:
        cluster = kiln.connect(address)
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
    """Every agent's start-up checks; exits 1 if any failed."""
    import kiln
    from kiln.errors import KilnError
    from kiln.report import checks_table

    try:
        cluster = kiln.connect(address)
    except KilnError as err:
        _fail(str(err))
    nodes = cluster.nodes()
    failed = [a for n in nodes if n.alive for a in n.agents if a.state != "ready"]
    if as_json:
        print(json.dumps({"ok": not failed, "nodes": [n.as_dict() for n in nodes]}, indent=2, default=str))
    else:
        console.print(checks_table(nodes))
        console.print("[green]all checks passed[/]" if not failed
                      else f"[red]{len(failed)} agent(s) refused to start[/]")
        for a in failed:
            console.print(f"  {escape(a.name)}: "
                          + (f"the {escape(a.check)} check failed" if a.check else escape(a.state)))
    kiln.shutdown(keep_agents=True)
    raise typer.Exit(1 if failed else 0)


@app.command()
def serve(host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="port")] = 8000,
          strategy: Annotated[str, typer.Option(help="round_robin | least_loaded | consistent_hash")] = "round_robin",
          api_key_file: Annotated[Path | None, typer.Option(help="file holding the Bearer API key")] = None,
          address: Address = None) -> None:
    """The HTTP gateway: /infer, /infer/parallel, /v1/embeddings, /cluster, /metrics."""
    from kiln.serve import run

    run(host=host, port=port, strategy=strategy,
        api_key_file=str(api_key_file) if api_key_file else None, address=address)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

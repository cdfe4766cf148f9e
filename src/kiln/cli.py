"""The ``kiln`` command: demo | up | join | down | status | doctor | serve."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="kiln: the cluster is the API. Bayesian and ML inference on a Ray cluster.")
console = Console()

Address = Annotated[str | None, typer.Option(
    "--address", envvar="KILN_ADDRESS",
    help="HOST:PORT of a running cluster; none starts the embedded default")]
JsonOut = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="print the ray command instead of running it")]
Block = Annotated[bool, typer.Option("--block", help="stay in the foreground; stopping kiln stops the node")]

SEED_000_SPEC = {"dist": "normal", "mu": 0.0, "sigma": 1.0}
SEED_001_OBS = [2.1, 2.5, 1.8, 2.3, 2.7, 1.9, 2.4, 2.2, 2.6, 2.0]


def _ray_bin() -> str:
    here = Path(sys.executable).with_name("ray")
    return str(here) if here.exists() else (shutil.which("ray") or "ray")


def _fail(message: str, code: int = 1) -> None:
    console.print(f"[red]error:[/] {message}")
    raise typer.Exit(code)


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
    from kiln.bayes import HalfNormal, Model, Normal

    model = (Model()
             .rv("mu", Normal(0.0, 10.0))
             .rv("sigma", HalfNormal(2.0))
             .rv("y", Normal("mu", "sigma"))
             .obs("y_obs", "y", SEED_001_OBS))
    post = kiln.sample(model, chains=4, warmup=500, draws=1000, on=node, seed=seed, progress=False)
    summary = post.summary()
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
def up(host: Annotated[str, typer.Option(help="address to bind; 127.0.0.1 keeps it on this machine")] = "127.0.0.1",
       port: Annotated[int, typer.Option(help="the head's GCS port")] = 6379,
       name: Annotated[str | None, typer.Option(help="this node's kiln name (default: the host's)")] = None,
       block: Block = False, dry_run: DryRun = False) -> None:
    """Start a Ray head node named for kiln and print the join command."""
    from kiln.cluster import NODE_RESOURCE, default_node_name

    node = name or default_node_name()
    cmd = [_ray_bin(), "start", "--head", f"--node-ip-address={host}", f"--port={port}",
           "--include-dashboard=false", f"--resources={json.dumps({NODE_RESOURCE + node: 1})}"]
    console.print(f"kiln head [bold]{node}[/] at {host}:{port}. On each other machine:\n"
                  f"  kiln join {host}:{port} --name gpu2\n"
                  "Token authentication stays on: copy this head's token (`ray get-auth-token`) into "
                  "RAY_AUTH_TOKEN on the joining machines. From a notebook: "
                  f"kiln.connect(\"{host}:{port}\").")
    _run(cmd, dry_run, block)


@app.command()
def join(address: Annotated[str, typer.Argument(help="HEAD_HOST:PORT")],
         name: Annotated[str, typer.Option(help="this node's kiln name, e.g. gpu2")],
         num_gpus: Annotated[int | None, typer.Option(help="GPUs to offer (default: all)")] = None,
         block: Block = False, dry_run: DryRun = False) -> None:
    """Start a Ray worker node carrying a kiln name and join it to a head."""
    from kiln.cluster import NODE_RESOURCE

    if not name.replace("-", "").replace("_", "").isalnum():
        _fail(f"--name {name!r}: use letters, digits, '-' and '_'")
    cmd = [_ray_bin(), "start", f"--address={address}",
           f"--resources={json.dumps({NODE_RESOURCE + name: 1})}"]
    if num_gpus is not None:
        cmd.append(f"--num-gpus={num_gpus}")
    console.print(f"node [bold]{name}[/] joining {address}")
    _run(cmd, dry_run, block)


@app.command()
def down(dry_run: DryRun = False) -> None:
    """Stop the Ray processes that `kiln up` / `kiln join` started on this machine."""
    _run([_ray_bin(), "stop"], dry_run)


def _run(cmd: list[str], dry_run: bool, block: bool = False) -> None:
    if dry_run:
        print(" ".join(cmd + (["--block"] if block else [])))
        return
    if block:
        # Become `ray start --block`: stopping this process (Ctrl-C, SIGTERM) stops the node.
        sys.stdout.flush()
        os.execv(cmd[0], cmd + ["--block"])
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
    if proc.returncode != 0:
        _fail(f"{' '.join(cmd[:3])} failed:\n{proc.stderr.strip() or proc.stdout.strip()}",
              proc.returncode)


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

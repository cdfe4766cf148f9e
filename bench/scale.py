"""How kiln's costs grow with the cluster: simulated clusters of 1, 8 and 32 nodes.

Each size is a ``ray.cluster_utils.Cluster`` on this machine (every node a real raylet with tiny
resources: no CPUs, one kiln name each), measured in a process of its own:

- connect:   ``kiln.connect(address)``: one agent started and checked per node
- status:    ``Cluster.nodes()`` in the connected driver (list_nodes), and `kiln status --json` (a new process
             that attaches and reuses the agents)
- call each: a no-op ``kiln.call`` to every node, one after another
- map:       the same no-op on every node at once (``kiln.map(..., nodes="all", chunksize=1)``)
- sample:    ``kiln.sample(model, chains=N, warmup=100, draws=100, on="all")``: one chain a node

    .venv/bin/python bench/scale.py [--sizes 1 8 32] [--out bench/results/scale-vm.json]

Prints each against the node count, with the time per node; a size that does not fit (memory,
time) is reported with what it got.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS = ("connect", "list_nodes", "status_cli", "call_each", "map_all", "sample_all")


def measure(n: int) -> dict:
    """Run in a child process: one cluster of ``n`` nodes, every step timed once (warm: each
    step's code and programs are compiled by a first, untimed run where it matters)."""
    import psutil
    from ray.cluster_utils import Cluster

    import kiln
    from kiln.bayes._examples import seed_001
    from kiln.cluster import NODE_RESOURCE

    out: dict = {"nodes": n}
    rc = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {NODE_RESOURCE + "n0": 1}, "include_dashboard": False})
    try:
        t = time.perf_counter()
        for i in range(1, n):
            rc.add_node(num_cpus=0, resources={NODE_RESOURCE + f"n{i}": 1})
        rc.wait_for_nodes()
        out["ray_nodes_s"] = time.perf_counter() - t
        t = time.perf_counter()
        cluster = kiln.connect(rc.address, start_timeout=600)
        out["connect"] = time.perf_counter() - t
        names = sorted({h.node for h in cluster.agents()})
        out["ready_agents"] = len(names)
        t = time.perf_counter()
        cluster.nodes()
        out["list_nodes"] = time.perf_counter() - t
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "KILN_ADDRESS")}
        t = time.perf_counter()
        r = subprocess.run([str(Path(sys.executable).with_name("kiln")), "status", "--json",
                            "--address", rc.address], capture_output=True, text=True,
                           timeout=900, env=env)
        out["status_cli"] = time.perf_counter() - t
        if r.returncode != 0:
            out["status_cli_error"] = r.stderr[-500:]

        def noop(x=None):
            return x

        for name in names:  # first calls ship the function to every agent: untimed
            kiln.call(name, noop)
        t = time.perf_counter()
        for name in names:
            kiln.call(name, noop)
        out["call_each"] = time.perf_counter() - t
        t = time.perf_counter()
        kiln.map(noop, range(len(names)), nodes="all", chunksize=1)
        out["map_all"] = time.perf_counter() - t
        model = seed_001()
        kiln.sample(model, chains=len(names), warmup=100, draws=100, on="all", progress=False)
        t = time.perf_counter()
        post = kiln.sample(model, chains=len(names), warmup=100, draws=100, on="all",
                           progress=False, seed=1)
        out["sample_all"] = time.perf_counter() - t
        out["sample_nodes"] = len({p.get("node") for p in post.placement})
        out["rss_gib"] = round(sum(p.memory_info().rss for p in psutil.process_iter()
                                   if _is_ray(p)) / 2**30, 1)
        kiln.shutdown(keep_agents=True)
    finally:
        rc.shutdown()
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}


def _is_ray(p) -> bool:
    try:
        return p.name() in ("raylet", "gcs_server") or p.cmdline()[:1] == ["ray::Agent"] or \
            any("ray" in a for a in p.cmdline()[:2])
    except Exception:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[1, 8, 32])
    ap.add_argument("--timeout", type=float, default=1500, help="seconds per size")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "scale-vm.json"))
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(measure(args.child)), flush=True)
        return
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "RAY_USAGE_STATS_ENABLED": "0"}
    rows = []
    for n in args.sizes:
        print(f"[{n} nodes] ...", flush=True)
        started = time.perf_counter()
        try:
            r = subprocess.run([sys.executable, __file__, "--child", str(n)], capture_output=True,
                               text=True, timeout=args.timeout, env=env)
            line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
            row = json.loads(line[7:]) if line else {
                "nodes": n, "error": (r.stderr or r.stdout)[-1500:]}
        except subprocess.TimeoutExpired:
            row = {"nodes": n, "error": f"did not finish within {args.timeout:.0f} s"}
        row["wall_s"] = round(time.perf_counter() - started, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{'nodes':>5} " + " ".join(f"{s:>11}" for s in STEPS) + "   (seconds; per node)")
    for row in rows:
        cells = []
        for s in STEPS:
            v = row.get(s)
            cells.append(f"{v:6.2f}/{v / row['nodes']:4.2f}" if isinstance(v, float) else f"{'-':>11}")
        print(f"{row['nodes']:5d} " + " ".join(cells) + ("   " + row["error"].splitlines()[-1][:80]
                                                          if "error" in row else ""))
    Path(args.out).write_text(json.dumps({
        "machine": f"{platform.node()} ({os.cpu_count()} cores, shared)",
        "what": {s: " ".join(x.split(":", 1)[1].split()) for s, x in zip(
            STEPS, ["connect: agents started and checked", "list_nodes: Cluster.nodes()",
                    "status_cli: `kiln status --json`, a new process",
                    "call_each: a no-op kiln.call to every node, in turn",
                    "map_all: a no-op on every node at once", "sample_all: one chain a node"],
            strict=True)},
        "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

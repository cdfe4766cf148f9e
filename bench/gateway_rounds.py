"""The gateway under one-text load, round after round, for settings side by side.

    python bench/gateway_rounds.py [--inflight 2,1] [--rounds 5,3] [--clients 1,64,256]
                                   [--workers 4,8] [--duration 3] [--loops uvloop,asyncio]

One embedded cluster (its agent warm, its CUDA graphs captured), then for each event loop
(``kiln serve --loop``), gateway worker count and value of ``KILN_GATEWAY_COALESCE_INFLIGHT``
a fresh ``kiln serve`` and its rounds: one window per client count, printed as it ends with
req/s, p50/p99/max latency and how much rode together (HTTP requests per agent call, agent
calls and texts per forward pass; ``bench/embed.py``'s ``merging``); where the requests' time
went (the gateway's Server-Timing stages, p50/p99: queue, cluster call, the job in the agent,
the gateway's total, and "outside" it: client, loopback, HTTP server); and what a slow request
may have waited for in that window: each gateway worker's event-loop lateness and garbage
collections, the agents' collections and how busy their device was, and the CPU seconds of
each kind of process (and per request). Rounds show what medians hide: a fresh cluster's
first tens of seconds under load once ramped up (``bench/results/gateway-inflight-h100.txt``;
the cause, CUDA graphs captured in requests' time, was found with these rounds:
``gateway-rounds-h100-before-rowbuckets.txt``), so run settings in both orders.
On a GPU machine, as `bash bench/gpu.sh rounds [ARGS]` (its environment: the model, offline).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from typing import Any

import embed
import loadgen
import serve_peers
from serve_peers import Server


def snapshot(url: str, workers: int) -> dict[str, Any]:
    """Each gateway worker's /cluster (a fresh connection each time lands on any worker: asked
    until every worker has answered, or 40 times) and the agents' figures in them."""
    seen: dict[int, dict[str, Any]] = {}
    agents: dict[str, Any] = {}
    for _ in range(40):
        with urllib.request.urlopen(url + "/cluster", timeout=30) as r:
            got = json.loads(r.read())
        seen[got["gateway"]["pid"]] = got["gateway"]
        agents = {a["name"]: a.get("info") or {} for a in got["agents"]}
        if len(seen) >= workers:
            break
    return {"workers": seen, "agents": agents, "cpu": embed.process_cpu(), "t": time.perf_counter()}


def over(report: dict[str, Any], key: str, ms: str) -> int:
    return int((report or {}).get(key, {}).get(ms, 0))


def stalls(before: dict[str, Any], after: dict[str, Any], req_per_s: float) -> str:
    """What changed between two snapshots: late event-loop timers (>= 50 ms) and full
    collections (with pauses >= 50 ms) per gateway worker; per agent its full collections,
    pauses >= 50 ms, busy share of the window and longest pass; by process kind the cores used
    and the CPU microseconds per request (at the window's rate, warm-up included)."""
    out = []
    for pid, g in after["workers"].items():
        b = before["workers"].get(pid)
        if b is None:
            continue
        lag = over(g["loop_lag"], "late_over_ms", "50") - over(b["loop_lag"], "late_over_ms", "50")
        full = g["gc"]["collections"][2] - b["gc"]["collections"][2]
        slow = over(g["gc"], "pauses_over_ms", "50") - over(b["gc"], "pauses_over_ms", "50")
        out.append(f"w{pid}: lag50 {lag} full {full} gc50 {slow}")
    wall = after["t"] - before["t"]
    for name, a in after["agents"].items():
        b = before["agents"].get(name) or {}
        gc_a, gc_b = a.get("gc") or {}, b.get("gc") or {}
        full = (gc_a.get("collections") or [0, 0, 0])[2] - (gc_b.get("collections") or [0, 0, 0])[2]
        slow = over(gc_a, "pauses_over_ms", "50") - over(gc_b, "pauses_over_ms", "50")
        busy = (a.get("batcher", {}).get("busy_s", 0) - b.get("batcher", {}).get("busy_s", 0)) / wall
        out.append(f"agent: full {full} gc50 {slow} busy {busy:.2f} "
                   f"longest_pass {a.get('batcher', {}).get('longest_pass_ms')}")
    cpu: dict[str, float] = {}
    for pid, (kind, sec) in after["cpu"].items():
        cpu[kind] = cpu.get(kind, 0) + sec - before["cpu"].get(pid, (kind, 0.0))[1]
    top = sorted(cpu.items(), key=lambda kv: -kv[1])[:6]
    per_request = 1e6 / wall / max(req_per_s, 1e-9)
    out.append("cpu " + ", ".join(f"{k} {v / wall:.2f} ({v * per_request:.0f} us/req)"
                                  for k, v in top))
    return " | ".join(out)


def round_trips(cluster: Any, calls: int = 300) -> str:
    """One agent call at a time from this process, p50 ms: Ray's smallest round trip (echo), a
    cached text and a fresh one: what a one-client request pays below the gateway."""
    agent = cluster.agents()[0]
    fixed = "a text asked again and again"
    fresh = iter(range(10**9))
    cases = {
        "echo": lambda: agent.invoke("agent", "echo", {"x": 1}),
        "embed_cached": lambda: agent.invoke("embed", "encode", {"texts": [fixed]}),
        "embed_fresh": lambda: agent.invoke("embed", "encode", {"texts": [
            f"a fresh text {next(fresh)} about the weather and the markets"]}),
    }
    out = []
    for name, call in cases.items():
        call()
        took = []
        for _ in range(calls):
            began = time.perf_counter()
            call()
            took.append((time.perf_counter() - began) * 1000)
        took.sort()
        out.append(f"{name} {took[len(took) // 2]:.3f}")
    return "agent calls from the driver, p50 ms: " + ", ".join(out)


def timing(r: dict[str, Any]) -> str:
    """The window's Server-Timing stages, p50/p99 ms (loadgen.stages)."""
    st = r.get("server_timing_ms") or {}
    return "server-timing p50/p99 ms: " + ", ".join(
        f"{k} {v['p50']}/{v['p99']}" for k, v in st.items())


def spy(server: Server, seconds: float) -> dict[str, Any]:
    """py-spy on the agents and one gateway worker for ``seconds``, from now (raw stacks)."""
    import subprocess
    from pathlib import Path

    out_dir = Path(os.environ.get("OUT", "/tmp")) / "kiln-prof"
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = {"gateway": embed.gateway_worker(server)}
    targets.update({f"agent{i}": pid for i, pid in enumerate(embed.agents_pids())})
    out = {}
    for name, pid in targets.items():
        if pid is None or embed.pyspy() is None:
            continue
        path = out_dir / f"pyspy-ramp-{name}.txt"
        proc = subprocess.Popen(
            [embed.pyspy(), "record", "--pid", str(pid), "--duration", str(int(seconds)),
             "--rate", "50", "--format", "raw", "--nonblocking", "--threads", "--output",
             str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out[name] = (proc, path)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inflight", default="2,1", help="values, in the order they run")
    p.add_argument("--rounds", default="5,3", help="rounds for each value")
    p.add_argument("--clients", default="64,256")
    p.add_argument("--workers", default="4", help="gateway worker counts, in order")
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--procs", type=int, default=4, help="load generator processes")
    p.add_argument("--loops", default="auto", help="kiln serve --loop values, in order")
    p.add_argument("--spy-seconds", type=float, default=0.0,
                   help="py-spy the agents and one gateway worker over the first rounds of the "
                        "first setting, for this long (the ramp of a fresh cluster)")
    a = p.parse_args()
    cluster = embed.warm_cluster()
    print(round_trips(cluster), flush=True)
    pairs = list(zip(a.inflight.split(","), a.rounds.split(","), strict=True))
    settings = [(loop, int(workers), inflight, rounds) for loop in a.loops.split(",")
                for workers in a.workers.split(",") for inflight, rounds in pairs]
    for loop, workers, inflight, rounds in settings:
        os.environ["KILN_GATEWAY_COALESCE_INFLIGHT"] = inflight  # the gateway inherits it
        port = serve_peers.free_port()
        cmd = [sys.executable, "-m", "kiln.cli", "serve", "--address", cluster.address,
               "--port", str(port), "--log-level", "warning", "--workers", str(workers),
               "--loop", loop]
        with Server(cmd, port, name="kiln-serve") as s:
            spies = spy(s, a.spy_seconds) if a.spy_seconds > 0 else {}
            a.spy_seconds = 0.0  # the first setting only: a fresh cluster's first rounds
            for i in range(int(rounds)):
                for clients in (int(c) for c in a.clients.split(",")):
                    before, snap = embed.batching(s.url), snapshot(s.url, workers)
                    r = loadgen.run(loadgen.Load(url=s.url, clients=clients, texts=1,
                                                 duration_s=a.duration, warmup_s=1,
                                                 procs=a.procs))
                    m = embed.merging(
                        r, {k: embed.batching(s.url)[k] - v for k, v in before.items()}, 1)
                    print("loop", loop, "workers", workers, "inflight", inflight, "round", i,
                          "c", clients,
                          r["req_per_s"], "p50", r["p50_ms"], "p99", r["p99_ms"],
                          "max", r["max_ms"], "req/call", m["requests_per_agent_call"],
                          "calls/pass", m["agent_calls_per_pass"],
                          "texts/pass", m["texts_per_pass"], flush=True)
                    print("   ", timing(r), flush=True)
                    print("   ", stalls(snap, snapshot(s.url, workers), r["req_per_s"]),
                          flush=True)
            for name, (proc, path) in spies.items():
                proc.wait(timeout=300)
                if path.exists():
                    print("py-spy", name, json.dumps(embed.collapsed(path, top=12)), flush=True)


if __name__ == "__main__":
    main()

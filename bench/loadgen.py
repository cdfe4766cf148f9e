"""One HTTP load generator for every embedding server the benchmarks drive (aiohttp, loopback).

``clients`` concurrent clients, each sending one request after another with ``texts`` fresh
texts per request (never the same text twice, so no cache answers, unless ``fixed`` is given),
for ``warmup_s`` untimed seconds and then a timed window of ``duration_s`` seconds or
``max_requests`` requests, whichever ends first. The clients run in ``procs`` child processes
(never in the caller's: an in-process server would share their GIL), started together on one
clock. Reported: req/s, texts/s, p50/p90/p99/max latency of the requests that finished inside
the window, errors by status, and the CPU seconds the clients themselves spent (on a small
machine they compete with the server).

Why aiohttp: httpx's connection pool capped 64 clients at 153 req/s where aiohttp drove the
same gateway at 906 (measured on cache hits): it measured the client.

    python bench/loadgen.py http://127.0.0.1:8000 --clients 64 --texts 1 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class Load:
    """What to send, and for how long (module docstring)."""

    url: str
    path: str = "/infer"
    shape: str = "infer"            # infer: {"texts": [...]}; openai: {"input": [...], "model"}
    clients: int = 1
    texts: int = 1                  # texts per request
    duration_s: float = 10.0
    warmup_s: float = 2.0
    max_requests: int | None = None  # bound on timed requests (all processes together)
    fixed: str | None = None        # send this one text every time (cache hits)
    procs: int = 1
    tag: str = field(default_factory=lambda: os.urandom(3).hex())  # keeps texts fresh per run
    timeout_s: float = 120.0
    model: str = "default"


def text(tag: str, n: int) -> str:
    """A distinct short sentence, about 20 tokens (the texts of bench/embed.py)."""
    return f"sentence {tag}-{n}: a cluster of GPUs answers one API call number {n}"


def body(load: Load, tag: str, n: int) -> bytes:
    texts = ([load.fixed] * load.texts if load.fixed is not None
             else [text(tag, n + i) for i in range(load.texts)])
    if load.shape == "openai":
        return json.dumps({"input": texts, "model": load.model}).encode()
    return json.dumps({"texts": texts}).encode()


def rows(load: Load, payload: Any) -> int:
    """Embeddings in a response (checked once per client, so the check costs nothing)."""
    return len(payload["data"] if load.shape == "openai" else payload["embeddings"])


def check_loopback(url: str) -> None:
    host = urlsplit(url).hostname
    if host not in LOOPBACK:
        raise SystemExit(f"loadgen: {url}: only loopback servers (127.0.0.1) are driven")


async def _clients(load: Load, proc: int, start: float, bound: int | None) -> dict[str, Any]:
    import aiohttp

    warm_end = start + load.warmup_s
    end = warm_end + load.duration_s
    # (finished at, latency, its Server-Timing header or "") of good timed requests
    done: list[tuple[float, float, str]] = []
    errors: dict[str, int] = {}
    issued = 0                              # timed requests sent (for the bound)
    counter = 0
    headers = {"content-type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=load.timeout_s)
    connector = aiohttp.TCPConnector(limit=load.clients, force_close=False)
    async with aiohttp.ClientSession(load.url, connector=connector, timeout=timeout) as session:
        async def client(i: int) -> None:
            nonlocal issued, counter
            checked = False
            while True:
                now = time.monotonic()
                if now >= end:
                    return
                if now >= warm_end:
                    if bound is not None and issued >= bound:
                        return
                    issued += 1
                n = counter
                counter += load.texts
                data = body(load, f"{load.tag}.{proc}", n)
                t = time.monotonic()
                try:
                    async with session.post(load.path, data=data, headers=headers) as r:
                        raw = await r.read()
                        status = r.status
                        timing = r.headers.get("server-timing", "")
                except (TimeoutError, aiohttp.ClientError, OSError) as err:
                    raw, status, timing = b"", type(err).__name__, ""
                finished = time.monotonic()
                if status == 200 and not checked:
                    got = rows(load, json.loads(raw))
                    if got != load.texts:
                        raise SystemExit(f"loadgen: {load.url}{load.path} answered {got} "
                                         f"embeddings for {load.texts} texts")
                    checked = True
                if finished < warm_end:
                    continue
                if status == 200:
                    done.append((finished, finished - t, timing))
                else:
                    errors[str(status)] = errors.get(str(status), 0) + 1

        # Requests still out when the window closes do not count, but they are awaited: left
        # behind, they would load the server during the next window.
        await asyncio.gather(*(client(i) for i in range(load.clients)))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"done": done, "errors": errors, "issued": issued,
            "cpu_s": usage.ru_utime + usage.ru_stime}


def _child(spec: str) -> None:
    """A child process: say ready, wait for the common start time on stdin, run, print JSON."""
    import aiohttp  # noqa: F401  (imported before "ready": not timed)

    d = json.loads(spec)
    load, proc, bound = Load(**d["load"]), d["proc"], d["bound"]
    print("ready", flush=True)
    start = float(sys.stdin.readline())
    time.sleep(max(0.0, start - time.monotonic()))
    out = asyncio.run(_clients(load, proc, start, bound))
    sys.stdout.write(json.dumps(out) + "\n")


def _spread_clients(clients: int, procs: int) -> list[int]:
    procs = max(1, min(procs, clients))
    return [clients // procs + (i < clients % procs) for i in range(procs)]


def run(load: Load) -> dict[str, Any]:
    """Drive ``load.url`` as ``load`` says; the summary (module docstring)."""
    check_loopback(load.url)
    shares = _spread_clients(load.clients, load.procs)
    children = []
    for proc, clients in enumerate(shares):
        part = Load(**{**asdict(load), "clients": clients})
        bound = None if load.max_requests is None else -(-load.max_requests * clients // load.clients)
        spec = json.dumps({"load": asdict(part), "proc": proc, "bound": bound})
        children.append(subprocess.Popen([sys.executable, __file__, "--child", spec],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         text=True))
    try:
        for c in children:
            line = c.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"loadgen: a client process did not start ({line!r})")
        start = time.monotonic() + 0.2
        for c in children:
            c.stdin.write(f"{start}\n")
            c.stdin.flush()
        wait = load.warmup_s + load.duration_s + load.timeout_s + 60
        outs = []
        for c in children:
            text_out, _ = c.communicate(timeout=wait)
            if c.returncode:
                raise RuntimeError(f"loadgen: a client process failed (exit {c.returncode})")
            outs.append(json.loads(text_out.strip().splitlines()[-1]))
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
    return summarise(load, outs, start)


def summarise(load: Load, outs: list[dict[str, Any]], start: float) -> dict[str, Any]:
    warm_end = start + load.warmup_s
    end = warm_end + load.duration_s
    done = [d for o in outs for d in o["done"]]
    if load.max_requests is not None and done:
        end = min(end, max(d[0] for d in done))   # the bound ended the window
    window = max(end - warm_end, 1e-9)
    timed = [d for d in done if d[0] <= end]
    lat = sorted(d[1] * 1000 for d in timed)
    errors: dict[str, int] = {}
    for o in outs:
        for k, v in o["errors"].items():
            errors[k] = errors.get(k, 0) + v

    def pct(q: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))], 3) if lat else None

    return {"req_per_s": round(len(lat) / window, 1),
            "texts_per_s": round(len(lat) * load.texts / window, 1),
            "p50_ms": round(statistics.median(lat), 3) if lat else None,
            "p90_ms": pct(0.90), "p99_ms": pct(0.99), "max_ms": round(lat[-1], 3) if lat else None,
            "requests": len(lat), "errors": sum(errors.values()), "errors_by_status": errors,
            "window_s": round(window, 3), "clients": load.clients, "texts_per_request": load.texts,
            "procs": len(outs), "client_cpu_s": round(sum(o["cpu_s"] for o in outs), 2),
            "cache_hits": load.fixed is not None, **stages(timed)}


def durations(header: str) -> dict[str, float]:
    """A ``Server-Timing`` header's ``name;dur=ms`` entries (others, and other parameters, are
    skipped: a server may send ``cache;desc="hit"``)."""
    out = {}
    for entry in header.split(","):
        name, *params = (p.strip() for p in entry.split(";"))
        for param in params:
            key, _, value = param.partition("=")
            if key == "dur":
                try:
                    out[name] = float(value)
                except ValueError:
                    pass
    return out


def stages(timed: list[tuple[float, float, str]]) -> dict[str, Any]:
    """Where the requests' time went, from the server's ``Server-Timing`` header (kiln's
    gateway sends one): p50 and p99 of each stage, and of "outside", the client's latency less
    the server's total (the client, the loopback and the HTTP server before the app)."""
    by: dict[str, list[float]] = {}
    for _, latency, header in timed:
        if not header:
            continue
        parts = durations(header)
        for name, ms in parts.items():
            by.setdefault(name, []).append(ms)
        if "total" in parts:
            by.setdefault("outside", []).append(latency * 1000 - parts["total"])
    if not by:
        return {}
    out = {}
    for name, values in by.items():
        values.sort()
        out[name] = {"p50": round(values[len(values) // 2], 3),
                     "p99": round(values[min(len(values) - 1, int(0.99 * len(values)))], 3)}
    return {"server_timing_ms": out}


FIGURES = ("req_per_s", "texts_per_s", "p50_ms", "p90_ms", "p99_ms")


def spread(runs: list[dict[str, Any]], keys: tuple[str, ...] = FIGURES) -> dict[str, Any]:
    """Median and min-max over repeated runs of each figure in ``keys``, and the runs."""
    out: dict[str, Any] = {}
    for k in keys:
        values = [r[k] for r in runs if r.get(k) is not None]
        if values:
            out[k] = {"median": round(statistics.median(values), 3), "min": min(values),
                      "max": max(values)}
    out["errors"] = sum(r.get("errors", 0) for r in runs)
    out["runs"] = runs
    return out


def repeat(load: Load, runs: int = 3) -> dict[str, Any]:
    """``runs`` windows of ``load`` (each with its warm-up and fresh texts): ``spread`` of them."""
    return spread([run(Load(**{**asdict(load), "tag": f"{load.tag}r{i}"})) for i in range(runs)])


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        _child(sys.argv[2])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url")
    p.add_argument("--path", default="/infer")
    p.add_argument("--shape", choices=("infer", "openai"), default="infer")
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--texts", type=int, default=1, help="texts per request")
    p.add_argument("--duration", type=float, default=10.0, help="timed seconds")
    p.add_argument("--warmup", type=float, default=2.0, help="untimed seconds first")
    p.add_argument("--max-requests", type=int, help="end the window after this many requests")
    p.add_argument("--fixed", help="send this text every time (cache hits)")
    p.add_argument("--procs", type=int, default=1, help="client processes")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--model", default="default", help="the model field of --shape openai")
    a = p.parse_args()
    load = Load(url=a.url, path=a.path, shape=a.shape, clients=a.clients, texts=a.texts,
                duration_s=a.duration, warmup_s=a.warmup, max_requests=a.max_requests,
                fixed=a.fixed, procs=a.procs, model=a.model)
    out = run(load) if a.runs == 1 else repeat(load, a.runs)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

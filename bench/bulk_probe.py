"""Where ``kiln.embed``'s bulk time goes, against kiln's ``Encoder`` in one process (issue 9, 2).

    python bench/bulk_probe.py [--bulk 50000] [--runs 3] [--chunks 2048,8192] [--spy-seconds 6]

On one GPU machine, as `bash bench/gpu.sh bulk-probe [ARGS]` (its environment: the model, offline):

1. the in-process ``Encoder``: bulk texts/s, and its two halves alone (tokenising; the forward
   passes of texts already tokenised);
2. ``kiln.embed`` through an embedded cluster, for each ``--chunks`` (texts per agent call):
   texts/s, and from the agent's own counts how busy its device was over the call (the share
   of the wall time its batcher held the device for passes), how many passes ran and how many
   full garbage collections;
3. with py-spy, ``kiln.embed`` called again and again for ``--spy-seconds``: the agent's
   samples of the thread holding the GIL (``--gil``; their count over the seconds times the
   rate is how much of the time any of its Python ran), the agent's threads, and this driver.

Printed as it goes and written as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import embed

RATE = 100  # py-spy samples a second


def stat(values: list[float]) -> dict[str, Any]:
    return {"median": round(statistics.median(values), 1),
            "min": round(min(values), 1), "max": round(max(values), 1), "runs": len(values)}


def in_process(texts: embed.Texts, bulk: int, runs: int) -> dict[str, Any]:
    import torch

    from kiln.embeddings._encoder import Encoder
    from kiln.embeddings._models import resolve

    device = "cuda" if torch.cuda.is_available() else "cpu"
    enc = Encoder(resolve("default"), device)
    enc.graphs_ready.wait(600)
    enc.encode(texts.take(bulk))
    out: dict[str, Any] = {"device": device}
    out["bulk"] = embed.bulk_rate(enc.encode, texts, bulk, runs)
    out["tokenize_only"] = embed.bulk_rate(enc.tokenize, texts, bulk, runs)
    ready = [enc.tokenize(texts.take(bulk)) for _ in range(runs)]
    rates = []
    for tokens in ready:
        began = time.perf_counter()
        enc.encode_tokens(tokens)
        rates.append(bulk / (time.perf_counter() - began))
    out["forward_only"] = stat(rates)
    del enc, ready
    embed.free(device)
    return out


def agent_counts(cluster: Any) -> dict[str, float]:
    info = cluster.agents()[0].info()
    b = (info.get("embed") or {}).get("batcher") or {}
    gc = info.get("gc") or {}
    return {"busy_s": b.get("busy_s", 0.0), "passes": b.get("batches", 0),
            "full_gc": (gc.get("collections") or [0, 0, 0])[2],
            "gc_s": sum(gc.get("seconds") or [0.0])}


def through_cluster(kiln: Any, texts: embed.Texts, bulk: int, runs: int, chunk: int
                    ) -> dict[str, Any]:
    cluster = kiln.current()
    rates, busy, passes, full, gc_s = [], [], [], [], []
    for _ in range(runs):
        batch = texts.take(bulk)
        before = agent_counts(cluster)
        began = time.perf_counter()
        kiln.embed(batch, chunk=chunk)
        wall = time.perf_counter() - began
        after = agent_counts(cluster)
        rates.append(bulk / wall)
        busy.append((after["busy_s"] - before["busy_s"]) / wall)
        passes.append(after["passes"] - before["passes"])
        full.append(after["full_gc"] - before["full_gc"])
        gc_s.append(after["gc_s"] - before["gc_s"])
    return {"chunk": chunk, "bulk": stat(rates), "device_busy_share": stat(busy),
            "passes": passes, "full_gc": full, "gc_s": [round(s, 4) for s in gc_s]}


def spied(kiln: Any, texts: embed.Texts, bulk: int, seconds: float, out_dir: Path
          ) -> dict[str, Any]:
    spy = embed.pyspy()
    if spy is None:
        return {"error": "no py-spy here"}
    out_dir.mkdir(parents=True, exist_ok=True)
    agent = embed.agents_pids()[0]
    runs = {"agent_gil": (agent, ["--gil"]), "agent_threads": (agent, ["--threads"]),
            "driver": (os.getpid(), ["--threads"])}
    procs = {}
    for name, (pid, extra) in runs.items():
        procs[name] = subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate",
             str(RATE), "--format", "raw", "--nonblocking", *extra, "--output",
             str(out_dir / f"pyspy-bulk-{name}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # py-spy attaches
    began, done = time.perf_counter(), 0
    while time.perf_counter() - began < seconds - 1.5:
        kiln.embed(texts.take(bulk))
        done += bulk
    out: dict[str, Any] = {"texts_per_s": round(done / (time.perf_counter() - began), 1)}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        path = out_dir / f"pyspy-bulk-{name}.txt"
        out[name] = embed.collapsed(path, top=14) if path.exists() else {"error": err[-300:]}
    # --gil: a sample only while some thread holds the GIL
    out["agent_gil_share"] = round(out["agent_gil"].get("samples", 0) / (RATE * seconds), 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bulk", type=int, default=50_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--chunks", default="2048,8192")
    p.add_argument("--spy-seconds", type=float, default=6.0)
    p.add_argument("--out", default=str(Path(os.environ.get("OUT", "/tmp")) / "bulk-probe.json"))
    a = p.parse_args()
    import kiln

    texts = embed.Texts()
    report: dict[str, Any] = {"in_process": in_process(texts, a.bulk, a.runs)}
    print("in process", json.dumps(report["in_process"]), flush=True)
    embed.warm_cluster()
    kiln.embed(texts.take(a.bulk))
    for chunk in (int(c) for c in a.chunks.split(",")):
        got = through_cluster(kiln, texts, a.bulk, a.runs, chunk)
        report[f"kiln_embed_chunk{chunk}"] = got
        print("kiln.embed", json.dumps(got), flush=True)
    if a.spy_seconds > 0:
        report["spied"] = spied(kiln, texts, a.bulk, a.spy_seconds,
                                Path(a.out).parent / "kiln-prof")
        print("spied", json.dumps(report["spied"], indent=1), flush=True)
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    print("wrote", a.out, file=sys.stderr)


if __name__ == "__main__":
    main()

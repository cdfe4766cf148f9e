"""What a GPU agent's encoder is doing: CUDA graphs in use or not, batches, and where bulk goes.

    python bench/agent_probe.py [--model DIR] [--out FILE]

Starts the embedded cluster, encodes a bulk call and a burst of concurrent one-text calls,
then prints each agent's encoder description (``cuda_graphs``, ``cuda_graph_error``) and
batcher counts, and ``kiln.embed``'s bulk texts/s at several chunk sizes (median of 3).
A diagnostic for the gateway and bulk figures of bench/embed.py, not a benchmark of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model")
    p.add_argument("--bulk", type=int, default=50_000)
    p.add_argument("--burst", type=int, default=2000, help="one-text calls from 64 threads")
    p.add_argument("--out")
    a = p.parse_args()
    if a.model:
        os.environ["KILN_EMBED_MODEL_DEFAULT"] = os.path.abspath(a.model)
    import kiln
    from kiln import cluster

    kiln.connect()
    report: dict = {}
    fresh = iter(range(10**9))

    def texts(n: int) -> list[str]:
        return [f"probe text {next(fresh)} about the weather, markets and a few other things"
                for _ in range(n)]

    kiln.embed(texts(4096))
    with ThreadPoolExecutor(64) as pool:
        list(pool.map(lambda _: kiln.embed(texts(1)), range(a.burst)))
    for chunk in (2048, 8192, 16384):
        runs = []
        for _ in range(3):
            batch = texts(a.bulk)
            start = time.perf_counter()
            kiln.embed(batch, chunk=chunk)
            runs.append(a.bulk / (time.perf_counter() - start))
        report[f"bulk_texts_per_s/chunk{chunk}"] = {
            "median": round(statistics.median(runs)), "runs": [round(r) for r in runs]}
    for handle in cluster.current().agents():
        info = handle.info()
        embed = info.get("embed", {})
        report[handle.name] = {"models": embed.get("models"), "batcher": embed.get("batcher"),
                               "cache": embed.get("cache")}
    kiln.shutdown(agents=True)
    text = json.dumps(report, indent=1, default=str)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()

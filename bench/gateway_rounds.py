"""The gateway under one-text load, round after round, for settings of the coalescer side by side.

    python bench/gateway_rounds.py [--inflight 2,1] [--rounds 5,3] [--clients 64,256]
                                   [--workers 4] [--duration 3]

One embedded cluster (its agent warm, its CUDA graphs captured), then for each value of
``KILN_GATEWAY_COALESCE_INFLIGHT`` a fresh ``kiln serve`` and its rounds: one window per client
count, printed as it ends with req/s, p50/p99/max latency and how much rode together
(HTTP requests per agent call, agent calls and texts per forward pass; ``bench/embed.py``'s
``merging``). Rounds show what medians hide: a fresh cluster's first tens of seconds under load
ramp up, so run the settings in both orders (``bench/results/gateway-inflight-h100.txt``).
On a GPU machine, with the environment of ``bench/gpu.sh`` (``KILN_EMBED_MODEL_DEFAULT``).
"""

from __future__ import annotations

import argparse
import os
import sys

import embed
import loadgen
import serve_peers
from serve_peers import Server

import kiln


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inflight", default="2,1", help="values, in the order they run")
    p.add_argument("--rounds", default="5,3", help="rounds for each value")
    p.add_argument("--clients", default="64,256")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--procs", type=int, default=4, help="load generator processes")
    a = p.parse_args()
    env = {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                                      "KILN_EMBED_MODEL_DEFAULT") if k in os.environ}
    cluster = kiln.connect(agent_env=env)
    for h in cluster.agents():
        h.invoke("embed", "encode", {"texts": ["warm"]})
    embed.graphs_ready(cluster)
    for inflight, rounds in zip(a.inflight.split(","), a.rounds.split(","), strict=True):
        os.environ["KILN_GATEWAY_COALESCE_INFLIGHT"] = inflight  # the gateway inherits it
        port = serve_peers.free_port()
        cmd = [sys.executable, "-m", "kiln.cli", "serve", "--address", cluster.address,
               "--port", str(port), "--log-level", "warning", "--workers", str(a.workers)]
        with Server(cmd, port, name="kiln-serve") as s:
            for i in range(int(rounds)):
                for clients in (int(c) for c in a.clients.split(",")):
                    before = embed.batching(s.url)
                    r = loadgen.run(loadgen.Load(url=s.url, clients=clients, texts=1,
                                                 duration_s=a.duration, warmup_s=1,
                                                 procs=a.procs))
                    m = embed.merging(
                        r, {k: embed.batching(s.url)[k] - v for k, v in before.items()}, 1)
                    print("inflight", inflight, "round", i, "c", clients, r["req_per_s"],
                          "p50", r["p50_ms"], "p99", r["p99_ms"], "max", r["max_ms"],
                          "req/call", m["requests_per_agent_call"],
                          "calls/pass", m["agent_calls_per_pass"],
                          "texts/pass", m["texts_per_pass"], flush=True)


if __name__ == "__main__":
    main()

"""kiln.dispatch against its peers, side by side in one run; prints ratios, writes JSON.

1. Round trip of a no-op: kiln's whole call path (boundary, agent, thread pool) against a raw
   Ray actor method call on the same cluster. Goal: <= 1.2x.
2. Seed 000's spec (normal, 200 warmup + 200 draws): kiln.dispatch cold (first call of that model
   structure on the agent) and warm, against the same BlackJAX run in-process (kiln's engine
   called directly, cold and warm). Goal: warm dispatch <= 0.1 s on a 2-core CPU.

    python bench/dispatch.py [--out bench/results/dispatch-HOST.json] [--repeats 200]
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import statistics
import time
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import kiln

SPEC = {"dist": "normal", "mu": 0.0, "sigma": 1.0}


@ray.remote(num_cpus=0)
class RawActor:
    def echo(self, x):
        return x


def _times(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _summary(ts: list[float]) -> dict[str, float]:
    ts = sorted(ts)
    return {"p50_ms": 1e3 * statistics.median(ts), "p99_ms": 1e3 * ts[int(0.99 * (len(ts) - 1))],
            "mean_ms": 1e3 * statistics.fmean(ts), "n": len(ts)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=f"bench/results/dispatch-{socket.gethostname()}.json")
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--warm-repeats", type=int, default=20)
    args = ap.parse_args()

    t = time.perf_counter()
    cluster = kiln.connect()
    connect_s = time.perf_counter() - t
    agent = cluster.agents()[0]
    node = agent.node

    # 1. no-op round trip
    raw = RawActor.options(scheduling_strategy=NodeAffinitySchedulingStrategy(agent.node_id, soft=False)).remote()
    ray.get(raw.echo.remote(0))
    agent.invoke("agent", "echo", 0)
    payload = {"mu": 0.0, "sigma": 1.0}
    raw_t = _times(lambda: ray.get(raw.echo.remote(payload)), args.repeats)
    kiln_t = _times(lambda: agent.invoke("agent", "echo", payload), args.repeats)

    # 2. seed 000 spec: dispatch cold / warm
    t = time.perf_counter()
    cold = kiln.dispatch(node, SPEC, num_warmup=200, num_samples=200)
    dispatch_cold_s = time.perf_counter() - t
    warm_t = _times(lambda: kiln.dispatch(node, SPEC, num_warmup=200, num_samples=200),
                    args.warm_repeats)

    # ... against the same BlackJAX run in this process (kiln's engine, no Ray in between)
    from kiln.bayes import _engine as engine
    from kiln.bayes._shorthand import spec_to_model

    model = spec_to_model(SPEC).to_dict()
    cache = engine.ProgramCache()
    t = time.perf_counter()
    engine.run(model, [0], 0, warmup=200, draws=200, cache=cache)
    local_cold_s = time.perf_counter() - t
    local_warm = _times(lambda: engine.run(model, [0], 0, warmup=200, draws=200, cache=cache),
                        args.warm_repeats)

    result = {
        "bench": "dispatch", "host": socket.gethostname(), "platform": platform.platform(),
        "device": cold.device, "node": node, "ray": ray.__version__, "kiln": kiln.__version__,
        "connect_s": connect_s,
        "noop_round_trip": {"raw_ray_actor": _summary(raw_t), "kiln": _summary(kiln_t),
                            "ratio_p50": statistics.median(kiln_t) / statistics.median(raw_t)},
        "seed000": {
            "dispatch_cold_s": dispatch_cold_s, "dispatch_cold_compile_s": cold.timing.get("compile_s"),
            "dispatch_warm": _summary(warm_t),
            "in_process_cold_s": local_cold_s, "in_process_warm": _summary(local_warm),
            "ratio_warm_p50": statistics.median(warm_t) / statistics.median(local_warm),
            "mean": cold.mean(), "sd": cold.std(),
        },
        "goals": {"noop_ratio_le_1.2": statistics.median(kiln_t) / statistics.median(raw_t) <= 1.2,
                  "warm_dispatch_le_0.1s": statistics.median(warm_t) <= 0.1},
    }
    kiln.shutdown()
    print(f"no-op round trip  raw Ray {result['noop_round_trip']['raw_ray_actor']['p50_ms']:.2f} ms   "
          f"kiln {result['noop_round_trip']['kiln']['p50_ms']:.2f} ms   "
          f"ratio {result['noop_round_trip']['ratio_p50']:.2f}x")
    s = result["seed000"]
    print(f"seed 000 spec     dispatch cold {s['dispatch_cold_s']:.2f} s  warm p50 "
          f"{s['dispatch_warm']['p50_ms']:.1f} ms   in-process cold {s['in_process_cold_s']:.2f} s  "
          f"warm p50 {s['in_process_warm']['p50_ms']:.1f} ms   ratio warm {s['ratio_warm_p50']:.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

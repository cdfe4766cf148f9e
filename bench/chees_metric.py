"""ChEES with and without an ensemble-estimated diagonal mass matrix, one run, ratios.

    python bench/chees_metric.py [--chains 4096] [--out bench/results/chees-metric-HOST.json]

For the seed 001 model and eight schools (non-centered), kiln's engine in-process (no Ray):
warm wall seconds, bulk ESS/s and unrounded R-hat of every scalar, for
``kiln.bayes._chees.MASS_MATRIX`` = None (BlackJAX's identity metric) and "diagonal".
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from pathlib import Path

import arviz as az

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def measure(model: dict, chains: int, warmup: int, draws: int, target: float, repeats: int) -> dict:
    from test_bayes_posteriordb import _stan_names

    from kiln.bayes import engine

    cache = engine.ProgramCache()
    kw = dict(warmup=warmup, draws=draws, method="chees", target_accept=target, platform="gpu",
              cache=cache, log_likelihood=False)
    engine.run(model, chains, seed=1, **kw)
    walls = []
    for i in range(repeats):
        t = time.perf_counter()
        r = engine.run(model, chains, seed=2 + i, **kw)
        walls.append(time.perf_counter() - t)
    wall = statistics.median(walls)
    out = {"warm_s": wall, "device": r["device"], "params": {}}
    for name, x in _stan_names(r["samples"]).items():
        ess = float(az.ess(x))
        out["params"][name] = {"mean": float(x.mean()), "sd": float(x.std()), "ess_per_s": ess / wall,
                               "r_hat": float(az.rhat(x))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chains", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=f"bench/results/chees-metric-{socket.gethostname()}.json")
    args = ap.parse_args()
    from test_bayes_posteriordb import CASES, _load

    from kiln.bayes import _chees
    from kiln.bayes.examples import seed_001

    seed = seed_001()
    build, target = CASES["eight_schools-eight_schools_noncentered"]
    data, reference = _load("eight_schools-eight_schools_noncentered")
    models = {"seed001": (seed.to_dict(), 500, 1000, 0.8), "eight_schools_nc": (build(data).to_dict(), 1000, 500, target)}
    result = {"chains": args.chains, "runs": {}}
    for metric in (None, "diagonal"):
        _chees.MASS_MATRIX = metric
        for name, (m, w, d, t) in models.items():
            r = measure(m, args.chains, w, d, t, args.repeats)
            result["runs"][f"{name}/{metric}"] = r
            worst = max(p["r_hat"] for p in r["params"].values())
            low = min(p["ess_per_s"] for p in r["params"].values())
            print(f"{name:18} metric={metric!s:9} warm {r['warm_s']:.3f} s  min ESS/s {low:10.0f}  "
                  f"max R-hat {worst:.4f}  " + "  ".join(
                      f"{k} {p['ess_per_s']:.0f}/{p['r_hat']:.4f}" for k, p in list(r["params"].items())[:4]),
                  flush=True)
    result["reference_eight_schools"] = reference
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""ChEES variants against NumPyro NUTS, min over every parameter (issue 9 item 4).

    python bench/chees_metric.py [--chains 4096] [--variants identity,ensemble,ensemble+floor]
                                 [--peer-chains 4,4096] [--repeats 3] [--out FILE.json]
    bash bench/gpu.sh chees        # on a GPU machine: 4096 chains, JSON into $OUT

For the seed 001 model (500 warm-up + 1000 draws) and eight schools non-centred (1000 + 500,
target_accept 0.9, posteriordb's reference), kiln's engine in-process (no Ray), one variant
of `kiln.bayes._chees` at a time (its MASS_MATRIX / LENGTH_FLOOR knobs, VARIANTS below):
  - cold seconds (compile + run) and warm wall seconds (median of --repeats, with the range),
  - per parameter: bulk and tail ESS, ESS/s (bulk ESS over the warm median), rank-normalised
    split R-hat (ArviZ) and nested R-hat (Margossian et al. 2024, the chains cut into
    NESTED_SUPERCHAINS groups of consecutive chains), mean and sd,
  - leapfrog steps per draw, step size, and the worst parameter's ESS per draw and per
    gradient (what a shared, loaded CPU's wall clock cannot blur);
then the peers, NumPyro's NUTS with `jit_model_args=True`: 4 chains on the CPU (kiln's
device="auto" puts 4 chains there), the better of chain_method "vectorized" and
"sequential", warm = median of --repeats re-runs; and, with --peer-chains 4096, as many chains
vectorized on the GPU (NumPyro's many-chain method; one warm run, ~10-40 s each).
The headline is min-over-parameters bulk ESS/s, kiln ChEES / NumPyro ("ratios").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.sampling import has_gpu, persistent_jax_cache  # noqa: E402

# name: (_chees.MASS_MATRIX, _chees.LENGTH_FLOOR, _chees.FLOOR_IN_WARMUP)
VARIANTS = {"identity": (None, None, False), "ensemble": ("ensemble", None, False),
            "ensemble+floor": ("ensemble", math.pi, True),            # kiln's default
            "ensemble+floor/2": ("ensemble", math.pi / 2, True),
            "ensemble+floor*1.3": ("ensemble", 1.3 * math.pi, True),
            "ensemble+drawfloor": ("ensemble", math.pi, False)}
NESTED_SUPERCHAINS = 16
EIGHT = "eight_schools-eight_schools_noncentered"


def nested_rhat(x: np.ndarray, superchains: int = NESTED_SUPERCHAINS) -> float:
    """Nested R-hat (Margossian, Hoffman, Sountsov, Riou-Durand, Vehtari & Gelman 2024) of
    (chains, draws) draws, the chains grouped into `superchains` consecutive blocks."""
    k = superchains
    m = x.shape[0] // k
    x = x[: k * m].reshape(k, m, -1)
    chain_mean = x.mean(2)
    super_mean = chain_mean.mean(1)
    b = super_mean.var(ddof=1)
    within = x.var(axis=2, ddof=1).mean(1) if x.shape[2] > 1 else 0.0
    between_chains = chain_mean.var(axis=1, ddof=1) if m > 1 else 0.0
    w = np.mean(between_chains + within)
    return float(np.sqrt(1.0 + b / w))


def summary(samples: dict[str, np.ndarray], wall: float) -> dict[str, Any]:
    import arviz as az

    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, x in samples.items():
            x = np.asarray(x, dtype=np.float64)
            ess = float(np.asarray(az.ess(x, method="bulk")).reshape(-1)[0])
            tail = float(np.asarray(az.ess(x, method="tail")).reshape(-1)[0])
            out[name] = {"mean": float(x.mean()), "sd": float(x.std()), "ess_bulk": ess,
                         "ess_tail": tail, "ess_per_s": ess / wall,
                         "r_hat": float(np.asarray(az.rhat(x)).reshape(-1)[0]),
                         "nested_r_hat": nested_rhat(x) if x.shape[0] >= 2 * NESTED_SUPERCHAINS
                         else None}
    return out


def headline(params: dict[str, Any]) -> dict[str, Any]:
    worst = min(params, key=lambda k: params[k]["ess_per_s"])
    nested = [p["nested_r_hat"] for p in params.values() if p["nested_r_hat"] is not None]
    return {"min_ess_per_s": params[worst]["ess_per_s"], "min_ess_param": worst,
            "min_ess_bulk": params[worst]["ess_bulk"],
            "max_r_hat": max(p["r_hat"] for p in params.values()),
            "max_nested_r_hat": max(nested) if nested else None}


def models() -> dict[str, tuple[Any, int, int, float]]:
    from kiln.bayes._examples import seed_001
    from tests.posteriordb import models as pdb
    from tests.posteriordb import reference

    data, _ = reference.load(EIGHT)
    return {"seed001": (seed_001().to_dict(), 500, 1000, 0.8),
            "eight_schools_nc": (pdb.module(EIGHT).model(data).validate().to_dict(), 1000, 500, 0.9)}


def measure_kiln(model: dict, chains: int, warmup: int, draws: int, target: float,
                 repeats: int, plat: str) -> dict[str, Any]:
    from kiln.bayes import _engine as engine
    from tests.posteriordb import reference

    cache = engine.ProgramCache()
    kw = dict(warmup=warmup, draws=draws, method="chees", target_accept=target, platform=plat,
              cache=cache, log_likelihood=False)
    t = time.perf_counter()
    engine.run(model, chains, seed=1, **kw)
    cold = time.perf_counter() - t
    walls, cpus, r = [], [], None
    for i in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        r = engine.run(model, chains, seed=2 + i, **kw)
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    wall = statistics.median(walls)
    params = summary(reference.stan_names(r["samples"]), wall)
    h = headline(params)
    # per draw and per gradient of the draws: what a loaded CPU's wall clock cannot blur
    h["min_ess_per_draw"] = h["min_ess_bulk"] / (chains * draws)
    h["min_ess_per_grad"] = h["min_ess_per_draw"] / float(r["stats"]["num_steps"].mean())
    # on a CPU shared with other work, this process's CPU seconds are the steadier measure
    h["min_ess_per_cpu_s"] = h["min_ess_bulk"] / statistics.median(cpus)
    return {"cold_s": cold, "warm_s": wall, "warm_runs_s": walls, "warm_cpu_s": cpus,
            "device": r["device"],
            "step_size": float(r["stats"]["step_size"][0]),
            "leapfrog_per_draw": float(r["stats"]["num_steps"].mean()),
            "divergences": int(r["stats"]["diverging"].sum()),
            "headline": h, "params": params}


def numpyro_model(name: str) -> tuple[Any, tuple]:
    import numpyro
    import numpyro.distributions as dist

    from kiln.bayes._examples import SEED_001_OBSERVATIONS

    if name == "seed001":
        def seed(y):
            mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
            sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
            numpyro.sample("y", dist.Normal(mu, sigma), obs=y)
        return seed, (np.asarray(SEED_001_OBSERVATIONS),)

    from tests.posteriordb import reference
    data, _ = reference.load(EIGHT)

    def eight(sigma, y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
        tt = numpyro.sample("theta_trans", dist.Normal(0.0, 1.0).expand([8]))
        numpyro.deterministic("theta", mu + tau * tt)
        numpyro.sample("y", dist.Normal(mu + tau * tt, sigma), obs=y)
    return eight, (np.asarray(data["sigma"], float), np.asarray(data["y"], float))


def measure_numpyro(name: str, chains: int, warmup: int, draws: int, target: float,
                    repeats: int) -> dict:
    """NumPyro's NUTS: 4 chains on the CPU (where kiln runs 4 chains), the best of
    "vectorized" and "sequential"; more chains vectorized on the GPU when there is one."""
    import jax
    from numpyro.infer import MCMC, NUTS

    from tests.posteriordb import reference

    fn, args = numpyro_model(name)
    dev = jax.devices("gpu")[0] if chains > 4 and has_gpu() else jax.devices("cpu")[0]
    best = None
    for method in ("vectorized", "sequential") if chains <= 4 else ("vectorized",):
        with jax.default_device(dev):
            args_ = tuple(jax.device_put(a, dev) for a in args)
            mcmc = MCMC(NUTS(fn, target_accept_prob=target), num_warmup=warmup, num_samples=draws,
                        num_chains=chains, chain_method=method, progress_bar=False,
                        jit_model_args=True)
            t = time.perf_counter()
            mcmc.run(jax.random.PRNGKey(1), *args_)
            jax.block_until_ready(mcmc.get_samples())
            cold = time.perf_counter() - t
            walls, cpus = [], []
            for i in range(repeats):
                t, c = time.perf_counter(), time.process_time()
                mcmc.run(jax.random.PRNGKey(2 + i), *args_)
                s = mcmc.get_samples(group_by_chain=True)
                jax.block_until_ready(s)
                walls.append(time.perf_counter() - t)
                cpus.append(time.process_time() - c)
        wall = statistics.median(walls)
        params = summary(reference.stan_names({k: np.asarray(v) for k, v in s.items()}), wall)
        h = headline(params)
        h["min_ess_per_cpu_s"] = h["min_ess_bulk"] / statistics.median(cpus)
        r = {"chain_method": method, "cold_s": cold, "warm_s": wall, "warm_runs_s": walls,
             "warm_cpu_s": cpus, "device": str(dev), "chains": chains, "headline": h,
             "params": params}
        if best is None or r["headline"]["min_ess_per_s"] > best["headline"]["min_ess_per_s"]:
            best = r
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chains", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--models", default="seed001,eight_schools_nc")
    ap.add_argument("--peer-chains", default="4",
                    help="NumPyro NUTS chain counts, comma-separated ('' for none): 4 runs on "
                         "the CPU, more on the GPU when there is one")
    ap.add_argument("--out", default=f"bench/results/chees-metric-{socket.gethostname()}.json")
    args = ap.parse_args()
    cache = persistent_jax_cache()  # noqa: F841 - NumPyro's re-compiles: see there

    import jax

    from kiln.bayes import _chees
    from tests.posteriordb import reference

    plat = "gpu" if has_gpu() else "cpu"
    chosen = {k: v for k, v in models().items() if k in args.models.split(",")}
    result: dict[str, Any] = {
        "chains": args.chains, "host": socket.gethostname(), "cpus": os.cpu_count(),
        "devices": [str(d) for d in jax.devices()], "jax": jax.__version__,
        "peer": "NumPyro NUTS, jit_model_args=True: 4 chains on the CPU (best chain_method), "
                "more chains vectorized on the GPU when there is one",
        "runs": {}, "numpyro": {}, "ratios": {}}
    result["reference_eight_schools"] = reference.load(EIGHT)[1]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # kiln first, the slow many-chain peer last; the JSON is rewritten after every measurement,
    # so a run cut short by a time limit keeps what it measured
    for name, (m, w, d, t) in chosen.items():
        for variant in args.variants.split(","):
            _chees.MASS_MATRIX, _chees.LENGTH_FLOOR, _chees.FLOOR_IN_WARMUP = VARIANTS[variant]
            r = measure_kiln(m, args.chains, w, d, t, args.repeats, plat)
            result["runs"][f"{name}/{variant}"] = r
            h = r["headline"]
            print(f"{name:17} ChEES {variant:15} warm {r['warm_s']:.3f} s "
                  f"[{min(r['warm_runs_s']):.3f}-{max(r['warm_runs_s']):.3f}]  "
                  f"min ESS/s {h['min_ess_per_s']:9.0f} ({h['min_ess_param']})  "
                  f"R-hat {h['max_r_hat']:.4f}  nested {h['max_nested_r_hat'] or 0:.4f}  "
                  f"L/draw {r['leapfrog_per_draw']:.1f}  min ESS/draw {h['min_ess_per_draw']:.3f} "
                  f"/grad {h['min_ess_per_grad']:.3f}  /cpu s {h['min_ess_per_cpu_s']:.0f}  "
                  f"eps {r['step_size']:.3f}  "
                  f"div {r['divergences']}", flush=True)
            out.write_text(json.dumps(result, indent=2))
        for pc in filter(None, args.peer_chains.split(",")):
            # many-chain NUTS runs take 10 s or more each on a GPU: one warm run
            p = measure_numpyro(name, int(pc), w, d, t, args.repeats if int(pc) <= 4 else 1)
            result["numpyro"][f"{name}/{pc}"] = p
            h = p["headline"]
            print(f"{name:17} NumPyro NUTS x{pc} {p['device']} ({p['chain_method']}) warm "
                  f"{p['warm_s']:.3f} s  min ESS/s {h['min_ess_per_s']:9.0f} ({h['min_ess_param']})  "
                  f"/cpu s {h['min_ess_per_cpu_s']:.0f}  max R-hat {h['max_r_hat']:.4f}", flush=True)
            for key, r in result["runs"].items():
                if key.startswith(name + "/"):
                    x = r["headline"]["min_ess_per_s"] / h["min_ess_per_s"]
                    xc = r["headline"]["min_ess_per_cpu_s"] / h["min_ess_per_cpu_s"]
                    result["ratios"][f"{key} vs NumPyro x{pc}"] = x
                    result["ratios"][f"{key} vs NumPyro x{pc}, per CPU second"] = xc
                    print(f"{'':17} {key:32} {x:8.1f}x NumPyro NUTS x{pc} (min ESS/s), "
                          f"{xc:.1f}x per CPU second", flush=True)
            out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Sampling benchmark (not a test): a 4-chain Bayesian model (mu ~ Normal(0, 10), sigma ~
HalfNormal(2), 10 observations) through kiln.sample, against its peers.

    python bench/sampling.py                          # CPU: kiln cold/warm vs NumPyro, BlackJAX, PyMC
    python bench/sampling.py --chains 4,1024,4096     # GPU node: many chains, NUTS and ChEES

For each chain count it measures, in one run on one machine:
  - kiln.sample end to end on the embedded default (cold: a fresh agent with an empty
    compilation cache; warm: the median of --repeats further calls),
  - kiln's engine in-process without Ray (BlackJAX NUTS, whole run in one jit),
  - NumPyro's MCMC (NUTS, chains vectorized), cold and warm (a second .run() of the same MCMC),
  - PyMC when it is installed,
and prints wall seconds, ESS/s of mu and sigma, R-hat, and ratios against NumPyro. Everything
runs in float64 (kiln's engine switches jax to x64; NumPyro runs in the same process).
Results go to --out (default bench/results/sampling-<host>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from kiln.bayes._examples import SEED_001_OBSERVATIONS, seed_001  # noqa: E402

SEED_Y = np.array(SEED_001_OBSERVATIONS)
WARMUP, DRAWS = 500, 1000


def seed_model() -> Any:
    return seed_001()


def diagnostics(samples: dict[str, np.ndarray], seconds: float) -> dict[str, Any]:
    """ESS (bulk), ESS/s and R-hat of mu and sigma from (chains, draws) arrays."""
    import arviz as az

    out: dict[str, Any] = {"seconds": seconds}
    for k in ("mu", "sigma"):
        x = np.asarray(samples[k])
        ess = float(az.ess(x, method="bulk"))
        out[k] = {"mean": float(x.mean()), "sd": float(x.std()), "ess_bulk": ess,
                  "ess_per_s": ess / seconds, "r_hat": float(az.rhat(x)) if x.shape[0] > 1 else None}
    # the headline: the worst parameter, not the best (issue 9)
    out["min_ess_per_s"] = min(out[k]["ess_per_s"] for k in ("mu", "sigma"))
    return out


def bench_kiln(chains: int, repeats: int, method: str, device: str) -> dict[str, Any]:
    import kiln

    cache_dir = tempfile.mkdtemp(prefix="kiln-bench-jax-")   # an honest cold start
    kiln.connect(agent_env={"KILN_JAX_CACHE": cache_dir})
    try:
        model = seed_model()
        opts = {"chains": chains, "warmup": WARMUP, "draws": DRAWS, "seed": 1, "method": method,
                "device": device, "progress": False, "log_likelihood": chains <= 1024}
        t = time.perf_counter()
        post = kiln.sample(model, **opts)
        cold = time.perf_counter() - t
        walls = []
        for i in range(repeats):
            t = time.perf_counter()
            post = kiln.sample(model, **{**opts, "seed": 2 + i})
            walls.append(time.perf_counter() - t)
        warm = statistics.median(walls)
        place = post.placement[0]
        return {"cold": diagnostics(post.samples, cold), "warm": diagnostics(post.samples, warm),
                "warm_runs_s": walls, "device": place.get("device"),
                "device_reason": place.get("device_reason"),
                "agent_sample_s": place.get("sample_s")}
    finally:
        kiln.shutdown()


def bench_engine(chains: int, repeats: int, method: str, device: str, plat: str) -> dict[str, Any]:
    from kiln.bayes import _engine as engine

    model = seed_model().to_dict()
    cache = engine.ProgramCache()
    kw = {"warmup": WARMUP, "draws": DRAWS, "method": method, "device": device, "platform": plat,
          "cache": cache, "log_likelihood": chains <= 1024}
    t = time.perf_counter()
    r = engine.run(model, chains, seed=1, **kw)
    cold = time.perf_counter() - t
    walls = []
    for i in range(repeats):
        t = time.perf_counter()
        r = engine.run(model, chains, seed=2 + i, **kw)
        walls.append(time.perf_counter() - t)
    return {"cold": diagnostics(r["samples"], cold),
            "warm": diagnostics(r["samples"], statistics.median(walls)), "device": r["device"]}


def bench_numpyro(chains: int, repeats: int, use_gpu: bool) -> dict[str, Any]:
    import jax
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import MCMC, NUTS

    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
        sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)

    dev = jax.devices("gpu")[0] if use_gpu else jax.devices("cpu")[0]
    y = jax.device_put(SEED_Y, dev)
    with jax.default_device(dev):
        # jit_model_args: the warm re-runs reuse the compiled model, NumPyro at its best
        mcmc = MCMC(NUTS(model), num_warmup=WARMUP, num_samples=DRAWS, num_chains=chains,
                    chain_method="vectorized", progress_bar=False, jit_model_args=True)
        t = time.perf_counter()
        mcmc.run(jax.random.PRNGKey(1), y)
        s = mcmc.get_samples(group_by_chain=True)
        jax.block_until_ready(s)
        cold = time.perf_counter() - t
        walls = []
        for i in range(repeats):
            t = time.perf_counter()
            mcmc.run(jax.random.PRNGKey(2 + i), y)
            s = mcmc.get_samples(group_by_chain=True)
            jax.block_until_ready(s)
            walls.append(time.perf_counter() - t)
    s = {k: np.asarray(v) for k, v in s.items()}
    return {"cold": diagnostics(s, cold), "warm": diagnostics(s, statistics.median(walls)),
            "device": str(dev)}


def bench_pymc(chains: int) -> dict[str, Any] | str:
    try:
        import pymc as pm
    except ImportError:
        return "not installed"
    with pm.Model():
        mu = pm.Normal("mu", 0.0, 10.0)
        sigma = pm.HalfNormal("sigma", 2.0)
        pm.Normal("y", mu, sigma, observed=SEED_Y)
        t = time.perf_counter()
        idata = pm.sample(draws=DRAWS, tune=WARMUP, chains=chains, cores=1, progressbar=False,
                          random_seed=1, compute_convergence_checks=False)
        cold = time.perf_counter() - t
        t = time.perf_counter()
        idata = pm.sample(draws=DRAWS, tune=WARMUP, chains=chains, cores=1, progressbar=False,
                          random_seed=2, compute_convergence_checks=False)
        warm = time.perf_counter() - t
    s = {k: idata.posterior[k].values for k in ("mu", "sigma")}
    return {"cold": diagnostics(s, cold), "warm": diagnostics(s, warm)}


def has_gpu() -> bool:
    import jax

    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


def persistent_jax_cache() -> tempfile.TemporaryDirectory:
    """JAX's persistent compilation cache in a fresh folder, for this process (keep the result).

    NumPyro's ``MCMC.run`` compiles its sampling loop again on every call: ``fori_collect``
    wraps its body in a new ``jax.jit`` each time (seen with ``jax_log_compiles``), even with
    ``jit_model_args=True``. Without this cache its "warm" runs paid seconds of compiling
    (bench/posteriordb.py's docstring); with it, the untimed run compiles and stores, and the
    timed runs load the same programs. kiln compiles once per process either way.
    """
    import jax

    cache = tempfile.TemporaryDirectory(prefix="kiln-bench-jax-cache-")
    jax.config.update("jax_compilation_cache_dir", cache.name)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chains", default="4", help="comma-separated chain counts (default 4)")
    ap.add_argument("--repeats", type=int, default=5, help="warm runs per measurement (median)")
    ap.add_argument("--method", default="auto", choices=["auto", "nuts", "chees", "both"],
                    help="auto: NUTS, and ChEES too from 1024 chains")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    ap.add_argument("--skip", default="", help="comma-separated: kiln,engine,numpyro,pymc")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cache = persistent_jax_cache()  # noqa: F841 - kept for the process's life
    skip = set(filter(None, args.skip.split(",")))
    chain_counts = [int(c) for c in args.chains.split(",")]

    import jax

    import kiln.bayes._engine  # noqa: F401 - float64, as on the agents
    from kiln.bayes._engine import GPU_MIN_CHAINS

    gpu = has_gpu()
    plat = "gpu" if gpu else "cpu"
    result: dict[str, Any] = {
        "host": socket.gethostname(), "python": sys.version.split()[0], "machine": platform.machine(),
        "cpus": os.cpu_count(), "jax": jax.__version__, "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()], "warmup": WARMUP, "draws": DRAWS,
        "model": "mu ~ Normal(0, 10), sigma ~ HalfNormal(2), 10 observations", "runs": []}
    for chains in chain_counts:
        methods = {"auto": ["nuts"] + (["chees"] if chains >= 1024 else []),
                   "both": ["nuts", "chees"]}.get(args.method, [args.method])
        entry: dict[str, Any] = {"chains": chains}
        # kiln.sample first: XLA's CPU thread pools in this process keep spinning for a
        # while after in-process work, which would slow an agent sharing the same cores
        for method in methods:
            if "kiln" not in skip:
                print(f"[{chains} chains] kiln.sample ({method}) ...", flush=True)
                entry[f"kiln_{method}"] = bench_kiln(chains, args.repeats, method, args.device)
        for method in methods:
            if "engine" not in skip:
                print(f"[{chains} chains] kiln engine in-process ({method}) ...", flush=True)
                entry[f"engine_{method}"] = bench_engine(chains, args.repeats, method, args.device, plat)
        if "numpyro" not in skip:
            print(f"[{chains} chains] NumPyro MCMC vectorized ...", flush=True)
            # on the device kiln's device="auto" picks: few chains go to the CPU
            entry["numpyro"] = bench_numpyro(chains, max(1, min(args.repeats, 2)),
                                             gpu and chains >= GPU_MIN_CHAINS)
        if "pymc" not in skip and chains <= 8:
            entry["pymc"] = bench_pymc(chains)
        result["runs"].append(entry)
        report(entry)

    out = Path(args.out or Path(__file__).parent / "results" / f"sampling-{socket.gethostname()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")


def report(entry: dict[str, Any]) -> None:
    chains = entry["chains"]
    peer = entry.get("numpyro")
    print(f"\n== {chains} chains x ({WARMUP} warmup + {DRAWS} draws) ==")
    print(f"{'what':28} {'wall s':>9} {'ESS/s mu':>11} {'ESS/s sigma':>12} {'R-hat mu':>9} "
          f"{'x NumPyro (time)':>17} {'x NumPyro (min ESS/s)':>22}")
    for name, r in sorted(entry.items(), key=lambda kv: kv[0] != "numpyro"):
        if not isinstance(r, dict):
            if name != "chains":
                print(f"{name:28} {r}")
            continue
        for phase in ("cold", "warm"):
            d = r[phase]
            ratio_t = ratio_e = ""
            if peer is not None:
                ratio_t = f"{peer[phase]['seconds'] / d['seconds']:.1f}x"
                ratio_e = f"{d['min_ess_per_s'] / peer[phase]['min_ess_per_s']:.1f}x"
            rhat = d["mu"]["r_hat"]
            print(f"{name + ' ' + phase:28} {d['seconds']:9.3f} {d['mu']['ess_per_s']:11.0f} "
                  f"{d['sigma']['ess_per_s']:12.0f} {rhat if rhat is None else round(rhat, 4)!s:>9} "
                  f"{ratio_t:>17} {ratio_e:>22}")
        if r.get("device_reason"):
            print(f"{'':28} device {r.get('device')}: {r['device_reason']}")


if __name__ == "__main__":
    main()

"""posteriordb benchmark (not a test): kiln against NumPyro NUTS on the posteriordb models.

    python bench/posteriordb.py                        # all 37 posteriors
    python bench/posteriordb.py --posteriors arK-arK,sblrc-blr --repeats 5

For each posterior of `tests/posteriordb` (the kiln model written from posteriordb's Stan
program), in one process on one machine:

  - kiln: `kiln.bayes._engine.run` in-process (BlackJAX NUTS, the whole run one jitted
    program), one untimed run to compile, then --repeats timed runs with new seeds
    (one timed run where the untimed one took over --slow-s seconds: the table says so);
  - NumPyro: `MCMC(NUTS(model))` over the *same* NumPyro model function kiln compiles
    the IR to (`kiln.bayes._compile.numpyro_model`), so both sample the same density;
    `jit_model_args=True`, chains vectorized like kiln's (--chain-method parallel needs
    XLA_FLAGS=--xla_force_host_platform_device_count=4), one untimed run, then --repeats
    timed `.run()` calls of the same MCMC.

NumPyro's warm `.run()` compiles again: each call wraps its loop body in a new `jax.jit`
(numpyro.util.fori_collect), so XLA sees a new program and compiles the warmup scan and
the sampling loop anew (on eight_schools_noncentered, 4 x (500 + 500), 2 shared CPUs:
14 s and 8 s warm runs, of which `jax_log_compiles` shows ~7 s of XLA compilation). Reusing
the MCMC object with `jit_model_args=True`, as here, does not avoid it. So the
process runs with JAX's persistent compilation cache in a fresh folder: the untimed run
compiles and stores, each timed run finds the same programs there (0.7-3 s on that model).
What is left of NumPyro's per-run overhead (tracing, loading the executables, ~0.3 s) is
its API's own cost and stays in its seconds; kiln's runs compile once either way.
Rows measured before this (numpyro_timing absent in the json) are marked ‡ in the table
and left out of its summary line; --resume runs them again.

Both get the same chains, warmup, draws and target acceptance, and the same kind of mass
matrix: NumPyro's is dense where kiln's engine chose a dense one (mass_matrix="auto", or
the model's test setting). Seconds are wall time of warmup plus draws; the
ESS is ArviZ's bulk ESS, the minimum over the parameters of the reference (Stan's names);
min-ESS/s is their ratio. Each row records the load average (1 min) at its start and
end: the machine may be shared, so seconds carry that noise. The table gives the median
over the repeats and the spread (min-max); ratio = kiln's median min-ESS/s over NumPyro's. Chains, warm-up and draws: the
larger of each model's test setting (`RUN`, mostly 4 x (500 + 500)) and --warmup/--draws.

Results: --out (default bench/results/posteriordb-vm.json) and the same name with .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from posteriordb import models, reference  # noqa: E402
from posteriordb.test_posteriordb import ALL  # noqa: E402

from bench.sampling import persistent_jax_cache  # noqa: E402
from kiln.bayes import _engine as engine  # noqa: E402
from kiln.bayes._compile import numpyro_model, split_constants  # noqa: E402

ESS_TRUSTED = 100     # a min-ESS below this marks the ratio: a chain was stuck
NUMPYRO_TIMING = "compilation cache"   # rows without it were timed recompiling each run


def min_ess(posterior: str, samples: dict[str, Any]) -> float:
    """The smallest bulk ESS over the reference's parameters."""
    import arviz as az

    _, ref = reference.load(posterior)
    draws = reference.stan_names({k: np.asarray(v) for k, v in samples.items()})
    return min(float(az.ess(np.asarray(draws[n], float), method="bulk")) for n in ref)


def summary(seconds: list[float], ess: list[float]) -> dict[str, Any]:
    rate = [e / s for e, s in zip(ess, seconds, strict=True)]
    return {"seconds": seconds, "min_ess": ess, "min_ess_per_s": rate,
            "median_seconds": statistics.median(seconds), "median_min_ess": statistics.median(ess),
            "median_min_ess_per_s": statistics.median(rate)}


def settings(posterior: str, args: argparse.Namespace) -> dict[str, Any]:
    run = models.module(posterior).RUN
    options = dict(run.options)
    return {"chains": args.chains or run.chains, "warmup": max(args.warmup, run.warmup),
            "draws": max(args.draws, run.draws), "target_accept": run.target_accept,
            "options": options}


def bench_kiln(model: dict[str, Any], posterior: str, s: dict[str, Any], repeats: int,
               slow_s: float) -> dict:
    def once(seed: int) -> tuple[float, dict]:
        t = time.perf_counter()
        r = engine.run(model, s["chains"], seed=seed, warmup=s["warmup"], draws=s["draws"],
                       target_accept=s["target_accept"], log_likelihood=False, **s["options"])
        return time.perf_counter() - t, r

    cold, r = once(100)
    s["dense"] = np.ndim(r["_inverse_mass_matrix"]) == 3     # (chains, d, d): the metric kiln chose
    if cold > slow_s:
        repeats = 1
    s["repeats"] = repeats
    seconds, ess = [], []
    for i in range(repeats):
        wall, r = once(101 + i)
        seconds.append(wall)
        ess.append(min_ess(posterior, r["samples"]))
    return {"cold_seconds": cold, **summary(seconds, ess)}


def bench_numpyro(model: dict[str, Any], posterior: str, s: dict[str, Any], repeats: int,
                  chain_method: str) -> dict:
    import jax
    import jax.numpy as jnp
    from numpyro.infer import MCMC, NUTS

    split = split_constants(model)
    fn = numpyro_model(split.structure)
    consts = [jnp.asarray(c) for c in split.consts]
    mcmc = MCMC(NUTS(fn, target_accept_prob=s["target_accept"], dense_mass=s["dense"]),
                num_warmup=s["warmup"], num_samples=s["draws"], num_chains=s["chains"],
                chain_method=chain_method, progress_bar=False, jit_model_args=True)

    def once(seed: int) -> tuple[float, dict]:
        t = time.perf_counter()
        mcmc.run(jax.random.PRNGKey(seed), consts)
        samples = jax.block_until_ready(mcmc.get_samples(group_by_chain=True))
        return time.perf_counter() - t, samples

    cold, _ = once(100)
    seconds, ess = [], []
    for i in range(repeats):
        wall, samples = once(101 + i)
        seconds.append(wall)
        ess.append(min_ess(posterior, samples))
    return {"cold_seconds": cold, **summary(seconds, ess)}


def spread(xs: list[float], fmt: str) -> str:
    return f"{format(statistics.median(xs), fmt)} ({format(min(xs), fmt)}–{format(max(xs), fmt)})"


def markdown(result: dict[str, Any], planned: list[str] | None = None) -> str:
    m = result["machine"]
    lines = [
        f"# posteriordb: kiln vs NumPyro NUTS ({m['host']}, {m['cpus']} CPUs)", "",
        f"{result['note']}", "",
        "| posterior | chains × (warmup + draws) | runs | kiln min-ESS | kiln s | kiln min-ESS/s "
        "| NumPyro min-ESS | NumPyro s | NumPyro min-ESS/s | ratio | load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["posteriors"].items():
        s, k, n = r["settings"], r["kiln"], r["numpyro"]
        load = f"{r['load_avg'][0][0]:.1f}–{r['load_avg'][1][0]:.1f}" if "load_avg" in r else "?"
        old = "" if r.get("numpyro_timing") == NUMPYRO_TIMING else " ‡"
        lines.append(
            f"| {name} | {s['chains']} × ({s['warmup']} + {s['draws']}){' dense' if s['dense'] else ''} "
            f"| {s['repeats']} | {spread(k['min_ess'], '.0f')} | {spread(k['seconds'], '.2f')} "
            f"| {spread(k['min_ess_per_s'], '.0f')} | {spread(n['min_ess'], '.0f')} "
            f"| {spread(n['seconds'], '.2f')} | {spread(n['min_ess_per_s'], '.0f')} "
            f"| {r['ratio']:.2f}{' †' if min(k['min_ess'] + n['min_ess']) < ESS_TRUSTED else ''}"
            f"{old} | {load} |")
    ratios = {name: r["ratio"] for name, r in result["posteriors"].items()
              if r.get("numpyro_timing") == NUMPYRO_TIMING}
    if ratios:
        worst = sorted(ratios, key=ratios.get)[:5]
        lines += ["", f"Over the {len(ratios)} rows timed with the compilation cache: median ratio "
                      f"{statistics.median(ratios.values()):.2f}; kiln ahead (ratio >= 1) on "
                      f"{sum(x >= 1 for x in ratios.values())} of {len(ratios)}. "
                      "Lowest: " + ", ".join(f"{n} {ratios[n]:.2f}" for n in worst) + "."]
    lines += ["", f"† a run with a min-ESS below {ESS_TRUSTED}: a stuck chain, so that ratio "
                  "compares failures, not speeds."]
    if any(r.get("numpyro_timing") != NUMPYRO_TIMING for r in result["posteriors"].values()):
        lines += ["", "‡ timed before the compilation cache: NumPyro's seconds include compiling "
                      "again on every run (see bench/posteriordb.py), so that ratio flatters kiln; "
                      "not in the summary above."]
    lines += ["", "load: the 1-minute load average at the row's start and end (2 CPUs shared "
                  "with other work; ? where not recorded)."]
    missing = [p for p in planned or [] if p not in result["posteriors"]]
    if missing:
        why = result.get("not_run", {})    # posterior -> why, written by hand into --out
        lines += ["", f"Not benchmarked yet ({len(missing)} of {len(planned)}): "
                      + ", ".join(f"{p} ({why[p]})" if p in why else p for p in missing) + "."]
    load = (m.get("load_avg_start"), m.get("load_avg_end"))
    lines += ["", f"Load average (1, 5, 15 min) at the start {load[0]} and the end {load[1]}: "
                  "the machine was shared, so seconds carry that noise."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--posteriors", default=",".join(ALL))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--slow-s", type=float, default=120.0,
                    help="one timed run per sampler where kiln's untimed run took longer")
    ap.add_argument("--chains", type=int, default=0, help="0: each model's test setting")
    ap.add_argument("--warmup", type=int, default=0, help="0: each model's test setting")
    ap.add_argument("--draws", type=int, default=0, help="0: each model's test setting")
    ap.add_argument("--chain-method", default="vectorized", choices=("vectorized", "parallel"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "posteriordb-vm.json"))
    ap.add_argument("--resume", action="store_true",
                    help="keep the posteriors already in --out (timed as now) and run the others")
    ap.add_argument("--render", action="store_true",
                    help="only write the .md of --out's results (listing the ones not run)")
    args = ap.parse_args()
    out = Path(args.out)
    if args.render:
        out.with_suffix(".md").write_text(markdown(json.loads(out.read_text()),
                                                   args.posteriors.split(",")))
        return

    import jax

    # NumPyro compiles again on every warm `.run()` (the module docstring says why); a fresh
    # persistent cache serves those compiles, so its timed runs don't pay for them
    cache = persistent_jax_cache()  # noqa: F841 - kept for the process's life
    if args.chain_method == "parallel" and jax.local_device_count() < 4:
        sys.exit("--chain-method parallel needs XLA_FLAGS=--xla_force_host_platform_device_count=4")
    result: dict[str, Any] = {
        "machine": {"host": socket.gethostname(), "cpus": os.cpu_count(),
                    "platform": platform.platform(), "jax": jax.__version__,
                    "load_avg_start": os.getloadavg()},
        "note": ("Wall seconds of warmup + draws, warm (after one untimed run); min-ESS: the "
                 "smallest bulk ESS over the reference's parameters; median of "
                 f"`runs` timed runs (min–max; one where kiln's untimed run took over "
                 f"{args.slow_s:.0f} s or time was short). NumPyro: the same NumPyro model function, "
                 f"NUTS, chain_method={args.chain_method!r}, jit_model_args=True, JAX's persistent "
                 "compilation cache on (NumPyro compiles again on every `.run()`; the cache serves "
                 "those compiles). ratio: kiln's median min-ESS/s over NumPyro's."),
        "posteriors": {},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.resume and out.exists():
        before = json.loads(out.read_text())
        result["posteriors"] = before["posteriors"]
        result["machine"]["load_avg_start"] = before["machine"].get("load_avg_start")
        result["not_run"] = before.get("not_run", {})
    for posterior in args.posteriors.split(","):
        if result["posteriors"].get(posterior, {}).get("numpyro_timing") == NUMPYRO_TIMING:
            continue
        load_start = os.getloadavg()
        mod = models.module(posterior)
        data, _ = reference.load(posterior)
        model = mod.model(data).validate().to_dict()
        s = settings(posterior, args)
        k = bench_kiln(model, posterior, s, args.repeats, args.slow_s)
        n = bench_numpyro(model, posterior, s, s["repeats"], args.chain_method)
        ratio = k["median_min_ess_per_s"] / n["median_min_ess_per_s"]
        result["posteriors"][posterior] = {"settings": s, "kiln": k, "numpyro": n, "ratio": ratio,
                                           "numpyro_timing": NUMPYRO_TIMING,
                                           "load_avg": [load_start, os.getloadavg()]}
        print(f"{posterior:45s} kiln {k['median_min_ess_per_s']:8.0f} ESS/s ({k['median_seconds']:.2f} s)"
              f"  numpyro {n['median_min_ess_per_s']:8.0f} ESS/s ({n['median_seconds']:.2f} s)"
              f"  ratio {ratio:.2f}", flush=True)
        result["machine"]["load_avg_end"] = os.getloadavg()
        out.write_text(json.dumps(result, indent=1))
        out.with_suffix(".md").write_text(markdown(result, args.posteriors.split(",")))
    print(markdown(result, args.posteriors.split(",")))


if __name__ == "__main__":
    main()

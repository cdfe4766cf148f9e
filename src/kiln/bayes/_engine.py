"""The sampler engine: compiled programs per (model structure, shapes, settings), run in chunks.

A run is three jitted programs, compiled ahead of time and cached (`ProgramCache`):
`start` (initial points, keys, the sampler's state; ChEES's whole warm-up), `steps` (warm-up
steps and draws `t0 .. t1` of every chain, `vmap`ped, the state and the draw buffers carried
on the device from one call to the next) and `finish` (draws to constrained values,
deterministics and pointwise log-likelihoods). Model constants and data are arguments, so a
second call with new values of the same shapes runs the cached executables (DESIGN.md: ~0.1 s
warm for the seed 001 model on a 2-core CPU; NumPyro's `MCMC` 0.57 s warm with JAX's
persistent cache serving the loop it compiles again on every `.run()`: bench/sampling.py).

Long: one run's orchestration (device choice, arguments, chunking, cancellation, progress,
assembling the result) in one place; the kernels are in `_nuts`, `_chees`, `_adapt`.

`steps` takes its bounds as arguments, so one executable runs any cut of the run into
chunks. A run with nothing to watch is one chunk; with a `should_stop` or a `progress`
callback the engine cuts it into chunks of about `CHUNK_SECONDS` (sized from the measured
speed), checks `should_stop()` and reports progress between them: a cancelled run stops
within one chunk and raises `CancelledError`, and no program holds a host callback, so every
program can go to JAX's persistent compilation cache. A chunk's steps use keys that depend
on (seed, chain, step index) only, so the draws are bit-identical however the run is cut.

Kernels are BlackJAX's: NUTS with Stan's windowed adaptation of a diagonal or dense mass
matrix (`_nuts.py`, `_adapt.py`), or ChEES-adapted dynamic HMC (`_chees.py`, Hoffman, Radul &
Sountsov 2021), whose chains share one trajectory length and so suit thousands of chains
on a GPU.

Chain `i`'s random key is `fold_in(PRNGKey(seed), i)`: its draws do not depend on which
agent runs it or which other chains share its batch (NUTS; ChEES adapts across the chains
of one call by design).

Everything runs in float64 (`jax_enable_x64` is switched on when this module is
imported): log densities must match closed forms to 1e-6 relative, and the models this
runs are small enough that float64 costs little even on a GPU.

`run()` and `warmup()` are plain functions, callable in-process (tests, benchmarks);
`_worker.py` calls them inside an agent.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ..errors import CancelledError, SamplingError, SpecError  # noqa: E402
from . import _adapt  # noqa: E402
from ._cache import ProgramCache  # noqa: E402
from ._compile import Compiled, compile_model, split_constants  # noqa: E402
from ._options import DEVICES, METHODS, SampleOptions  # noqa: E402, F401
from ._program import (  # noqa: E402
    INIT_MAX_GRADIENT,
    TRACE_LOCK,
    Programs,
    Settings,
    compile_programs,
    warmup_steps,
)

# device="auto" on a GPU agent: below this many chains the node's CPU wins, because a
# GPU pays a kernel launch per leapfrog step (seed 001, 4 chains: 1.4 s on an H100,
# 0.09 s on a 2-core CPU).
GPU_MIN_CHAINS = 64
GPU_MIN_WORK = 2_000_000       # chains x data elements: big data goes to the GPU anyway
PROGRESS_EVERY = 100           # draws between progress reports
# A watched run (should_stop or progress) is cut into chunks of about this many seconds:
# the bound on how late a cancellation is noticed, and one dispatch (~0.1 ms) per chunk.
CHUNK_SECONDS = 0.25
FIRST_CHUNK = 20               # steps in a watched run's first chunk, which measures the speed
# mass_matrix="auto" adapts a dense metric up to this many parameters, and only when the
# longest slow warm-up window holds at least DENSE_MIN_DRAWS_PER_DIM draws per parameter.
# Why 50: a dense metric costs a (d, d) matrix-vector product per leapfrog step (2,500
# multiply-adds at d = 50, small next to any model's gradient) and a Cholesky per window,
# and it removes the correlations that leave a diagonal metric taking maximum-depth trees
# (bench/dense_mass.py: ~60x less time to the same min ESS on two correlated regressions);
# beyond that the d(d+1)/2 covariances need more warm-up draws than a default run has
# (the last window of warmup=500 holds 200 draws), so a noisy dense estimate would cost
# more than it saves. Too few draws per parameter leaves directions the window never saw
# with a near-zero variance, which is worse than the diagonal.
DENSE_MAX_DIM = 50
DENSE_MIN_DRAWS_PER_DIM = 2
# NUTS batches are padded to a multiple of this many chains: XLA's CPU code takes a
# scalar path for a remainder that does not fill a SIMD register, and a last-bit
# difference there grows into different draws. Padded, chain i's draws are identical
# whichever chains share its batch (measured: batches of 4, 8, 12, 16 agree; 1-3 do not).
LANES = 4


_DEFAULT_CACHE = ProgramCache()


def default_cache() -> ProgramCache:
    """The process-wide cache used when `run()` gets none."""
    return _DEFAULT_CACHE


# -- device choice -------------------------------------------------------------------


def choose_device(requested: str, platform: str, n_chains: int, data_size: int) -> tuple[Any, str, str]:
    """(jax device, "cpu" | "gpu", why) for a run of `n_chains` on an agent of `platform`."""
    if requested not in DEVICES:
        raise SpecError("device", f"{requested!r}; one of {', '.join(DEVICES)}")
    has_gpu = platform == "gpu" and _gpu_devices()
    if requested == "gpu":
        if not has_gpu:
            raise SpecError("device", "'gpu' was asked for but this agent has no GPU "
                            "(use device='auto' or 'cpu', or on= a GPU node)")
        return _gpu_devices()[0], "gpu", "device='gpu' was asked for"
    cpu = _cpu_device()
    if requested == "cpu" or not has_gpu:
        if cpu is None:
            raise SpecError("device", "this agent's jax has no CPU backend (JAX_PLATFORMS "
                            "excludes it); use device='gpu' or 'auto'")
        why = "device='cpu' was asked for" if requested == "cpu" else "the agent has no GPU"
        return cpu, "cpu", why
    work = n_chains * max(data_size, 1)
    if n_chains >= GPU_MIN_CHAINS or work >= GPU_MIN_WORK:
        return _gpu_devices()[0], "gpu", (f"auto: {n_chains} chains x {data_size} data values "
                                          "is enough parallel work for the GPU")
    if cpu is None:
        return _gpu_devices()[0], "gpu", ("auto: few chains would run faster on the node's CPU, "
                                          "but JAX_PLATFORMS excludes the CPU backend")
    return cpu, "cpu", (
        f"auto: {n_chains} chains (< {GPU_MIN_CHAINS}) of a small model run faster on the "
        "node's CPU, since a GPU pays a kernel launch per leapfrog step")


def _cpu_device() -> Any:
    try:
        return jax.devices("cpu")[0]
    except RuntimeError:
        return None


def _gpu_devices() -> list[Any]:
    try:
        return jax.devices("gpu")
    except RuntimeError:
        return []


# -- running -------------------------------------------------------------------------


class _Watch:
    """Cancellation checks and progress reports between the pieces of one run."""

    def __init__(self, chain_ids: list[int], draws: int, should_stop: Callable[[], bool] | None,
                 progress: Callable[[dict[str, Any]], None] | None) -> None:
        self.what = f"sampling of chains {chain_ids}"
        self.draws, self.should_stop, self.progress = draws, should_stop, progress

    @property
    def active(self) -> bool:
        return self.should_stop is not None or self.progress is not None

    def check(self, where: str) -> None:
        if self.should_stop is not None and self.should_stop():
            raise CancelledError(f"{self.what} was cancelled {where}")

    def report(self, value: dict[str, Any]) -> None:
        if self.progress is not None:
            try:
                self.progress(value)
            except Exception:  # noqa: BLE001 - progress must never break a run
                pass


def run(model: dict[str, Any], chains: list[int] | int, seed: int = 0, *,
        options: SampleOptions | None = None, init: dict[str, Any] | None = None,
        adaptation: dict[str, Any] | None = None,
        progress: Callable[[dict[str, Any]], None] | None = None,
        should_stop: Callable[[], bool] | None = None, platform: str = "cpu",
        cache: ProgramCache | None = None, **settings: Any) -> dict[str, Any]:
    """Sample `chains` (indices, or a count meaning 0..n-1) of `model` (IR dict).

    The settings come as `options` (a `SampleOptions`, validated where it was made: the
    agent's path) or as keyword arguments (`seed`, `warmup`, `draws`, `target_accept`,
    `max_tree_depth`, `method`, `mass_matrix`, `device`, `log_likelihood`), validated here.
    When `should_stop()` turns true the run stops within about `CHUNK_SECONDS` plus one
    compiled chunk and raises `CancelledError`. Returns plain data: the result dict
    described in _worker.py.
    """
    t_start = time.perf_counter()
    opts = options if options is not None else SampleOptions.parse({"seed": seed, **settings})
    cache = cache or _DEFAULT_CACHE
    chain_ids = _chain_ids(chains)
    watch = _Watch(chain_ids, opts.draws, should_stop, progress)
    watch.check("before it started")
    n_real = len(chain_ids)
    if opts.method == "nuts" and n_real % LANES:
        # pad with copies of real chains; their results are dropped
        chain_ids = chain_ids + [chain_ids[i % n_real] for i in range(LANES - n_real % LANES)]
    split = split_constants(model)
    data_size = int(sum(c.size for c in split.consts))
    dev, dev_kind, reason = choose_device(opts.device, platform, n_real, data_size)
    watch.report({"phase": "starting", "draws_done": 0})

    t0 = time.perf_counter()
    def build_model() -> Compiled:
        with TRACE_LOCK, jax.default_device(dev):
            return compile_model(split.structure, [jnp.asarray(c) for c in split.consts])
    cm, _ = cache.get("models", split.key, build_model)
    compile_s = time.perf_counter() - t0
    watch.check("after the model was built")
    settings_ = Settings(len(chain_ids), opts.warmup, opts.draws, opts.method, opts.target_accept,
                         opts.max_tree_depth, adaptation is None,
                         _dense(opts, cm.dim, adaptation),
                         adaptation is not None and adaptation.get("positions") is not None,
                         init is not None and adaptation is None, opts.log_likelihood)
    args = _arguments(cm, split.consts, opts.seed, chain_ids, init, adaptation, settings_, dev)
    t0 = time.perf_counter()
    progs, compiled_now = cache.get("programs", (split.key, settings_, str(dev)),
                                    lambda: compile_programs(cm, settings_, args, dev))
    compile_s += time.perf_counter() - t0
    watch.check("after compiling")

    watch.report({"phase": "warmup", "draws_done": 0})
    t0 = time.perf_counter()
    try:
        out = _execute(progs, args, settings_, watch)
    except CancelledError:
        raise
    except Exception as e:  # XLA runtime errors: report where, keep the agent alive
        raise SamplingError(f"sampling failed on device {dev}: {type(e).__name__}: {e}") from e
    sample_s = time.perf_counter() - t0

    if len(chain_ids) != n_real:
        out = jax.tree.map(lambda x: x[:n_real] if np.ndim(x) else x, out)
        chain_ids = chain_ids[:n_real]
    result = _assemble(out, chain_ids, cm, settings_)
    result["timing"] = {"compile_s": compile_s, "sample_s": sample_s,
                        "total_s": time.perf_counter() - t_start}
    result.update(compiled=compiled_now, compiles=cache.compiles, device=f"{dev_kind}:{dev.id}"
                  if dev_kind == "gpu" else "cpu", device_reason=reason)
    watch.report({"phase": "done", "draws_done": opts.draws,
                  "divergences": result["stats"]["diverging"].sum(axis=1).tolist()})
    return result


def _execute(progs: Programs, args: tuple[Any, ...], s: Settings, watch: _Watch) -> dict[str, Any]:
    """start, then `steps` in chunks (one when nothing watches the run), then finish."""
    consts = args[0]
    carry = progs.start(*args)
    warm_n = warmup_steps(s)
    total = warm_n + s.draws
    if not watch.active:
        return jax.device_get(progs.finish(consts, progs.steps(consts, carry, 0, total)))
    jax.block_until_ready(carry)
    watch.check("after its initialisation" + (" and ChEES warm-up" if s.method == "chees" else ""))
    t, size = 0, FIRST_CHUNK
    while t < total:
        t1 = min(total, t + size)
        if t < warm_n:
            t1 = min(t1, warm_n)            # a chunk is warm-up or draws, so reports say which
        elif watch.progress is not None:    # reports every PROGRESS_EVERY draws at most
            t1 = min(t1, warm_n + ((t - warm_n) // PROGRESS_EVERY + 1) * PROGRESS_EVERY)
        tic = time.perf_counter()
        carry = jax.block_until_ready(progs.steps(consts, carry, t, t1))
        took = time.perf_counter() - tic
        size = max(1, int(CHUNK_SECONDS * (t1 - t) / max(took, 1e-6)))
        t = t1
        if t <= warm_n:
            watch.check(f"after {t} of {warm_n} warm-up steps")
            watch.report({"phase": "warmup", "draws_done": 0, "warmup_done": t})
        else:
            watch.check(f"after {t - warm_n} of {s.draws} draws")
            if watch.progress is not None:
                ndiv, steps = jax.device_get((carry.ndiv, carry.sampler.step_size))
                watch.report({"phase": "sampling", "draws_done": t - warm_n,
                              "divergences": np.asarray(ndiv)[:s.n_chains].tolist(),
                              "step_size": np.asarray(steps).tolist()})
    return jax.device_get(progs.finish(consts, carry))


def warmup(model: dict[str, Any], chains: list[int] | int, seed: int = 0, *,
           options: SampleOptions | None = None, init: dict[str, Any] | None = None,
           should_stop: Callable[[], bool] | None = None, platform: str = "cpu",
           cache: ProgramCache | None = None, **settings: Any) -> dict[str, Any]:
    """Warm up `chains` once and pool their adaptation (warmup_mode="shared").

    Returns the median step size, the mean inverse mass matrix over chains ((d,) or, dense,
    (d, d)), and each chain's last warmup position (unconstrained, flat):
    `sample(adaptation=...)` takes them. `should_stop` as in `run`.
    """
    opts = options if options is not None else SampleOptions.parse({"seed": seed, **settings})
    opts = opts.model_copy(update={"draws": 1, "log_likelihood": False})
    r = run(model, chains, options=opts, init=init, should_stop=should_stop, platform=platform,
            cache=cache)
    return {"step_size": float(np.median(r["stats"]["step_size"])),
            "inverse_mass_matrix": np.mean(r["_inverse_mass_matrix"], axis=0),
            "positions": r["_last_position"], "chains": r["chains"],
            "timing": r["timing"], "compiled": r["compiled"], "compiles": r["compiles"],
            "device": r["device"], "device_reason": r["device_reason"]}


def _chain_ids(chains: list[int] | int) -> list[int]:
    # the chain indices are the job's, not an option: kiln.sample and dispatch make them
    if isinstance(chains, (int, np.integer)) and not isinstance(chains, bool):
        if chains < 1:
            raise SpecError("chains", f"at least one chain, got {chains}")
        return list(range(int(chains)))
    ids = [int(c) for c in chains]
    if not ids:
        raise SpecError("chains", "at least one chain")
    if len(set(ids)) != len(ids) or min(ids) < 0:
        raise SpecError("chains", f"distinct non-negative chain indices, got {ids}")
    return ids


def _dense(opts: SampleOptions, dim: int, adaptation: dict[str, Any] | None) -> bool:
    """Whether this run's NUTS uses a dense inverse mass matrix (see DENSE_MAX_DIM)."""
    if opts.method != "nuts":
        return False
    if adaptation is not None:   # the given metric decides: (d, d) or (chains, d, d) is dense
        shape = np.shape(adaptation.get("inverse_mass_matrix"))
        return len(shape) >= 2 and shape[-2:] == (dim, dim) and (len(shape) == 3 or dim > 1
                                                                  or opts.mass_matrix == "dense")
    if opts.mass_matrix != "auto":
        return opts.mass_matrix == "dense"
    return (dim <= DENSE_MAX_DIM
            and _adapt.largest_slow_window(opts.warmup) >= DENSE_MIN_DRAWS_PER_DIM * dim)


def _arguments(cm: Compiled, consts: list[np.ndarray], seed: int, chain_ids: list[int],
               init: dict[str, Any] | None, adaptation: dict[str, Any] | None, s: Settings,
               dev: Any) -> tuple[Any, ...]:
    n, dim = len(chain_ids), cm.dim
    metric = (dim, dim) if s.dense else (dim,)
    put = lambda x: jax.device_put(x, dev)  # noqa: E731
    c = [put(np.asarray(x)) for x in consts]
    init_z = np.zeros((n, dim))
    if s.init:
        missing = set(cm.latent) - set(init)
        extra = set(init) - set(cm.latent)
        if missing or extra:
            raise SpecError("init", (f"missing {sorted(missing)}" if missing else "")
                            + (f" unknown {sorted(extra)}" if extra else "")
                            + f"; the model's variables: {sorted(cm.latent)}")
        try:
            with TRACE_LOCK:   # NumPyro, eagerly (see TRACE_LOCK)
                z = np.asarray(cm.unconstrain(init, c))
        except (ValueError, TypeError) as e:
            raise SpecError("init", f"outside the support of the model's variables ({e})") from None
        if not np.all(np.isfinite(z)):
            raise SpecError("init", "outside the support of the model's variables")
        init_z = np.broadcast_to(z, (n, dim)).copy()
    step, imm, pos = np.ones(n), np.ones((n, *metric)), np.zeros((n, dim))
    if adaptation is not None:
        try:
            step = _per_chain(adaptation["step_size"], n, ())
            imm = _per_chain(adaptation["inverse_mass_matrix"], n, metric)
            if adaptation.get("positions") is not None:
                pos = _per_chain(adaptation["positions"], n, (dim,))
        except (KeyError, ValueError, TypeError) as e:
            raise SpecError("adaptation", f"step_size, inverse_mass_matrix {metric} and "
                            f"positions (chains, {dim}) expected: {e}") from None
        positive = (np.all(np.linalg.eigvalsh(imm) > 0) if s.dense else np.all(imm > 0))
        if not (np.all(np.isfinite(step)) and np.all(step > 0) and positive):
            raise SpecError("adaptation", "step size and inverse mass matrix must be finite and "
                            "> 0 (a dense one positive definite)")
    windows = _adapt.schedule(s.warmup if s.adapt and s.method == "nuts" else 0)
    return (c, put(np.uint32(seed)), put(np.asarray(chain_ids, np.int64)), put(init_z), put(step),
            put(imm), put(pos), put(windows))


def _per_chain(value: Any, n: int, trailing: tuple[int, ...]) -> np.ndarray:
    """One row per chain: a shared value broadcast, or per-chain rows cycled over padding."""
    a = np.asarray(value, dtype=np.float64)
    if a.shape == trailing:
        return np.broadcast_to(a, (n, *trailing)).copy()
    a = a.reshape(-1, *trailing)
    return a[np.arange(n) % len(a)]


def _assemble(out: dict[str, Any], chain_ids: list[int], cm: Compiled, s: Settings) -> dict[str, Any]:
    samples = {k: np.asarray(v) for k, v in out["samples"].items()}
    stats = {k: np.asarray(v) for k, v in out["stats"].items()}
    # per chain, so that the Posterior can tell saturated trees (tree_depth == this) apart
    stats["max_tree_depth"] = np.full(len(chain_ids), s.max_tree_depth if s.method == "nuts" else 0)
    warnings: list[str] = []
    failed: list[int] = []
    for j, ch in enumerate(chain_ids):
        problems = []
        if not bool(out["init_ok"][j]):
            problems.append("no initial point in 100 tries with a finite log density and a "
                            f"gradient below {INIT_MAX_GRADIENT:g}")
        if any(not np.all(np.isfinite(v[j])) for v in samples.values()):
            problems.append("NaN or inf in its draws")
        ndiv = int(stats["diverging"][j].sum())
        if ndiv == stats["diverging"].shape[1]:
            problems.append("every draw diverged")
        if problems:
            failed.append(ch)
            warnings.append(f"chain {ch} failed numerically: " + "; ".join(problems))
        if not math.isfinite(float(stats["step_size"][j])):
            warnings.append(f"chain {ch}: adapted step size is not finite")
    return {"chains": chain_ids, "samples": samples, "stats": stats,
            "log_likelihood": {k: np.asarray(v) for k, v in out["log_likelihood"].items()},
            "observed": {k: list(v) for k, v in cm.observed.items()},
            "warnings": warnings, "failed_chains": failed,
            "_last_position": np.asarray(out["last_position"]),
            "_inverse_mass_matrix": np.asarray(out["inverse_mass_matrix"])}

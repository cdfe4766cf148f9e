"""The sampler engine: one jitted program per (model structure, shapes, settings).

The whole run — initial points, warmup, draws, and turning draws into constrained
values, deterministics and pointwise log-likelihoods — is ONE `jax.jit` program with
the chains `vmap`ped, compiled ahead of time and cached (`ProgramCache`). Model
constants and data are arguments of the program, so a second call with new values of
the same shapes runs the cached executable (DESIGN.md: 0.09 s warm for the seed 001
model on a 2-core CPU, where NumPyro's `MCMC` takes 3.4 s).

Kernels are BlackJAX's: NUTS with Stan-style window adaptation (`method="nuts"`), or
ChEES-adapted dynamic HMC (`method="chees"`, Hoffman, Radul & Sountsov 2021), whose
chains share one trajectory length and so suit thousands of chains on a GPU.

Chain `i`'s random key is `fold_in(PRNGKey(seed), i)`: its draws do not depend on
which agent runs it or which other chains share its batch (NUTS; ChEES adapts across
the chains of one call by design).

Everything runs in float64 (`jax_enable_x64` is switched on when this module is
imported): log densities must match closed forms to 1e-6 relative, and the models this
runs are small enough that float64 costs little even on a GPU.

`run()` and `warmup()` are plain functions, callable in-process (tests, benchmarks);
`worker.py` calls them inside an agent.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ..errors import SamplingError, SpecError  # noqa: E402
from .compile import Compiled, compile_model, split_constants  # noqa: E402

METHODS = ("nuts", "chees")
DEVICES = ("auto", "cpu", "gpu")
# device="auto" on a GPU agent: below this many chains the node's CPU wins, because a
# GPU pays a kernel launch per leapfrog step (seed 001, 4 chains: 1.4 s on an H100,
# 0.09 s on a 2-core CPU).
GPU_MIN_CHAINS = 64
GPU_MIN_WORK = 2_000_000       # chains x data elements: big data goes to the GPU anyway
PROGRESS_EVERY = 100           # draws between progress reports from inside the program
# NUTS batches are padded to a multiple of this many chains: XLA's CPU code takes a
# scalar path for a remainder that does not fill a SIMD register, and a last-bit
# difference there grows into different draws. Padded, chain i's draws are identical
# whichever chains share its batch (measured: batches of 4, 8, 12, 16 agree; 1-3 do not).
LANES = 4
# ChEES adapts step size and trajectory length across the chains; "diagonal" would also
# estimate a diagonal mass matrix from the ensemble. Measured on an H200 with 4096 chains
# (bench/chees_metric.py): it lowered eight schools' worst R-hat from 1.022 to 1.004 but ran
# 27x longer (its trajectory-length floor), for 7x less ESS/s; so the identity metric it is.
CHEES_MASS_MATRIX: str | None = None


class Settings(NamedTuple):
    """Everything that changes the compiled program, apart from the model."""

    n_chains: int
    warmup: int
    draws: int
    method: str
    target_accept: float
    max_tree_depth: int
    adapt: bool            # True: adapt step size/mass matrix; False: use the given ones
    positions: bool        # start from given (warmed-up) positions
    init: bool             # start from a given initial point (user's `init`)
    loglik: bool
    progress: bool         # report draws from inside the run (a host callback)


class ProgramCache:
    """Compiled programs of one agent (or one process), with a compile counter."""

    def __init__(self, max_programs: int = 64) -> None:
        self.models: OrderedDict[str, Compiled] = OrderedDict()
        self.programs: OrderedDict[tuple, Any] = OrderedDict()
        self.compiles = 0
        self.hits = 0
        self.max_programs = max_programs
        self.lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        return {"compiles": self.compiles, "hits": self.hits, "programs": len(self.programs),
                "models": len(self.models)}


_DEFAULT_CACHE = ProgramCache()
_REPORTERS: dict[int, Callable[[dict[str, Any]], None]] = {}
_RUN_IDS = itertools.count(1)


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


# -- the program ---------------------------------------------------------------------


def _build_program(cm: Compiled, s: Settings) -> Callable[..., Any]:
    """The whole run as one function of arrays; jitted and compiled by the caller."""
    import blackjax
    from blackjax.adaptation.base import get_filter_adapt_info_fn

    dim = cm.dim

    def program(consts: Any, seed: Any, chain_ids: Any, init_z: Any, step_size: Any,
                inv_mass: Any, positions: Any, run_id: Any) -> dict[str, Any]:
        def ld(z: Any) -> Any:
            return cm.logdensity(z, consts)

        base = jax.random.PRNGKey(seed)
        chain_keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(chain_ids)
        k_init, k_warm, k_draw = jnp.moveaxis(
            jax.vmap(lambda k: jax.random.split(k, 3))(chain_keys), 1, 0)

        # Stan's initialisation: uniform(-2, 2) on the unconstrained space, retried
        # until the log density and its gradient are finite
        def init_one(key: Any) -> tuple[Any, Any]:
            def cond(c: Any) -> Any:
                return (~c[2]) & (c[0] < 100)

            def body(c: Any) -> Any:
                z = jax.random.uniform(jax.random.fold_in(key, c[0]), (dim,), minval=-2.0, maxval=2.0)
                lp, g = jax.value_and_grad(ld)(z)
                return c[0] + 1, z, jnp.isfinite(lp) & jnp.all(jnp.isfinite(g))
            _, z, ok = jax.lax.while_loop(cond, body, (0, jnp.zeros(dim), False))
            return z, ok

        if s.positions:
            z0, init_ok = positions, jnp.ones(s.n_chains, bool)
        elif s.init:
            z0 = init_z
            init_ok = jax.vmap(lambda z: jnp.isfinite(ld(z)))(z0)
        else:
            z0, init_ok = jax.vmap(init_one)(k_init)

        if s.method == "chees":
            import optax

            chees = blackjax.chees_adaptation(ld, s.n_chains, target_acceptance_rate=s.target_accept,
                                              adaptation_info_fn=get_filter_adapt_info_fn(),
                                              mass_matrix_estimation=CHEES_MASS_MATRIX)
            (states, params), _ = chees.run(k_warm[0], z0, step_size=0.1,
                                            optim=optax.adam(0.025), num_steps=max(s.warmup, 1),
                                            max_sampling_steps=s.draws)
            alg = blackjax.dynamic_hmc(ld, **params)

            def step_all(keys: Any, states: Any) -> Any:
                return jax.vmap(alg.step)(keys, states)
            steps = jnp.broadcast_to(params["step_size"], (s.n_chains,))
        else:
            kernel = blackjax.nuts.build_kernel()

            def step_chain(key: Any, state: Any, eps: Any, imm: Any) -> Any:
                return kernel(key, state, ld, eps, imm, max_num_doublings=s.max_tree_depth)

            if s.adapt:
                if s.warmup > 0:
                    wa = blackjax.window_adaptation(
                        blackjax.nuts, ld, target_acceptance_rate=s.target_accept,
                        max_num_doublings=s.max_tree_depth,
                        adaptation_info_fn=get_filter_adapt_info_fn())

                    def warm_one(key: Any, z: Any) -> Any:
                        (st, p), _ = wa.run(key, z, num_steps=s.warmup)
                        return st, p["step_size"], p["inverse_mass_matrix"]
                    states, steps, imms = jax.vmap(warm_one)(k_warm, z0)
                else:
                    states = jax.vmap(lambda z: blackjax.nuts.init(z, ld))(z0)
                    steps, imms = jnp.full(s.n_chains, 0.1), jnp.ones((s.n_chains, dim))
            else:
                steps, imms = step_size, inv_mass
                states = jax.vmap(lambda z: blackjax.nuts.init(z, ld))(z0)
                if s.warmup > 0:  # burn-in with the shared step size and mass matrix
                    def burn(st: Any, t: Any) -> Any:
                        keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(k_warm)
                        return jax.vmap(step_chain)(keys, st, steps, imms)[0], None
                    states, _ = jax.lax.scan(burn, states, jnp.arange(s.warmup))

            def step_all(keys: Any, states: Any) -> Any:
                return jax.vmap(step_chain)(keys, states, steps, imms)

        def draw(carry: Any, t: Any) -> Any:
            states, ndiv = carry
            keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(k_draw)
            states, info = step_all(keys, states)
            ndiv = ndiv + info.is_divergent.astype(jnp.int32)
            if s.progress:
                # one host callback per PROGRESS_EVERY draws; a program with a callback is
                # kept in memory only (JAX's persistent cache refuses host callbacks), so
                # runs without progress get their own, persistently cacheable, program
                jax.lax.cond(((t + 1) % PROGRESS_EVERY == 0) | (t + 1 == s.draws),
                             lambda: jax.debug.callback(_report, run_id, t + 1, ndiv, steps),
                             lambda: None)
            depth = (info.num_trajectory_expansions if s.method == "nuts"
                     else jnp.zeros(s.n_chains, jnp.int32))
            out = (states.position, info.acceptance_rate, info.is_divergent, info.energy,
                   depth, info.num_integration_steps)
            return (states, ndiv), out

        (_, _), (pos, acc, div, energy, depth, nsteps) = jax.lax.scan(
            draw, (states, jnp.zeros(s.n_chains, jnp.int32)), jnp.arange(s.draws))
        pos = jnp.swapaxes(pos, 0, 1)  # (chains, draws, dim)

        def post(z: Any) -> Any:
            values, loglik = cm.postprocess(z, consts)
            return values, (loglik if s.loglik else {})
        values, loglik = jax.vmap(jax.vmap(post))(pos)
        t = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731 - (draws, chains) -> (chains, draws)
        return {"samples": values, "log_likelihood": loglik, "init_ok": init_ok,
                "stats": {"step_size": steps, "acceptance_rate": t(acc), "diverging": t(div),
                          "energy": t(energy), "tree_depth": t(depth), "num_steps": t(nsteps)},
                "last_position": pos[:, -1], "inverse_mass_matrix": (
                    imms if s.method == "nuts" else jnp.broadcast_to(
                        params["inverse_mass_matrix"], (s.n_chains, dim)))}

    return program


def _report(run_id: Any, done: Any, ndiv: Any, steps: Any) -> None:
    fn = _REPORTERS.get(int(run_id))
    if fn is not None:
        try:
            fn({"phase": "sampling", "draws_done": int(done),
                "divergences": np.asarray(ndiv).tolist(), "step_size": np.asarray(steps).tolist()})
        except Exception:  # noqa: BLE001 - progress must never break a run
            pass


# -- running -------------------------------------------------------------------------


def run(model: dict[str, Any], chains: list[int] | int, seed: int = 0, *, warmup: int = 500,
        draws: int = 1000, target_accept: float = 0.8, max_tree_depth: int = 10,
        method: str = "nuts", device: str = "auto", platform: str = "cpu",
        init: dict[str, Any] | None = None, adaptation: dict[str, Any] | None = None,
        log_likelihood: bool = True, progress: Callable[[dict[str, Any]], None] | None = None,
        cache: ProgramCache | None = None) -> dict[str, Any]:
    """Sample `chains` (indices, or a count meaning 0..n-1) of `model` (IR dict).

    Returns plain data: the result dict described in worker.py.
    """
    t_start = time.perf_counter()
    cache = cache or _DEFAULT_CACHE
    chain_ids = list(range(chains)) if isinstance(chains, int) else [int(c) for c in chains]
    _check_options(chain_ids, seed, warmup, draws, target_accept, max_tree_depth, method)
    n_real = len(chain_ids)
    if method == "nuts" and n_real % LANES:
        # pad with copies of real chains; their results are dropped
        chain_ids = chain_ids + [chain_ids[i % n_real] for i in range(LANES - n_real % LANES)]
    split = split_constants(model)
    data_size = int(sum(c.size for c in split.consts))
    dev, dev_kind, reason = choose_device(device, platform, n_real, data_size)
    if progress is not None:
        progress({"phase": "starting", "draws_done": 0})

    compile_s = 0.0
    compiled_now = False
    with cache.lock:
        cm = cache.models.get(split.key)
        if cm is None:
            t0 = time.perf_counter()
            with jax.default_device(dev):
                cm = compile_model(split.structure, [jnp.asarray(c) for c in split.consts])
            compile_s += time.perf_counter() - t0
            cache.models[split.key] = cm
    settings = Settings(len(chain_ids), int(warmup), int(draws), method, float(target_accept),
                        int(max_tree_depth), adaptation is None,
                        adaptation is not None and adaptation.get("positions") is not None,
                        init is not None and adaptation is None, bool(log_likelihood),
                        progress is not None)
    args = _arguments(cm, split.consts, seed, chain_ids, init, adaptation, settings, dev)
    pkey = (split.key, settings, str(dev))
    with cache.lock:
        exe = cache.programs.get(pkey)
        if exe is None:
            t0 = time.perf_counter()
            exe = jax.jit(_build_program(cm, settings)).lower(*args).compile()
            compile_s += time.perf_counter() - t0
            cache.programs[pkey] = exe
            cache.compiles += 1
            compiled_now = True
            while len(cache.programs) > cache.max_programs:
                cache.programs.popitem(last=False)
        else:
            cache.programs.move_to_end(pkey)
            cache.hits += 1

    run_id = int(args[-1])
    if progress is not None:
        _REPORTERS[run_id] = progress
        progress({"phase": "warmup", "draws_done": 0})
    t0 = time.perf_counter()
    try:
        out = jax.device_get(exe(*args))
    except Exception as e:  # XLA runtime errors: report where, keep the agent alive
        raise SamplingError(f"sampling failed on device {dev}: {type(e).__name__}: {e}") from e
    finally:
        _REPORTERS.pop(run_id, None)
    sample_s = time.perf_counter() - t0

    if len(chain_ids) != n_real:
        out = jax.tree.map(lambda x: x[:n_real] if np.ndim(x) else x, out)
        chain_ids = chain_ids[:n_real]
    result = _assemble(out, chain_ids, cm)
    result["timing"] = {"compile_s": compile_s, "sample_s": sample_s,
                        "total_s": time.perf_counter() - t_start}
    result.update(compiled=compiled_now, compiles=cache.compiles, device=f"{dev_kind}:{dev.id}"
                  if dev_kind == "gpu" else "cpu", device_reason=reason)
    if progress is not None:
        progress({"phase": "done", "draws_done": int(draws),
                  "divergences": result["stats"]["diverging"].sum(axis=1).tolist()})
    return result


def warmup(model: dict[str, Any], chains: list[int] | int, seed: int = 0, *, warmup: int = 500,
           target_accept: float = 0.8, max_tree_depth: int = 10, device: str = "auto",
           platform: str = "cpu", init: dict[str, Any] | None = None,
           cache: ProgramCache | None = None) -> dict[str, Any]:
    """Warm up `chains` once and pool their adaptation (warmup_mode="shared").

    Returns the median step size, the mean inverse mass matrix over chains, and each
    chain's last warmup position (unconstrained, flat): `sample(adaptation=...)` takes them.
    """
    r = run(model, chains, seed, warmup=warmup, draws=1, target_accept=target_accept,
            max_tree_depth=max_tree_depth, device=device, platform=platform, init=init,
            log_likelihood=False, cache=cache)
    return {"step_size": float(np.median(r["stats"]["step_size"])),
            "inverse_mass_matrix": np.mean(r["_inverse_mass_matrix"], axis=0),
            "positions": r["_last_position"], "chains": r["chains"],
            "timing": r["timing"], "compiled": r["compiled"], "compiles": r["compiles"],
            "device": r["device"], "device_reason": r["device_reason"]}


def _check_options(chain_ids: list[int], seed: Any, warmup: int, draws: int, target_accept: float,
                   max_tree_depth: int, method: str) -> None:
    if not chain_ids:
        raise SpecError("chains", "at least one chain")
    if len(set(chain_ids)) != len(chain_ids) or min(chain_ids) < 0:
        raise SpecError("chains", f"distinct non-negative chain indices, got {chain_ids}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise SpecError("seed", f"an integer in [0, 2**32), got {seed!r}")
    for name, v, lo in (("warmup", warmup, 0), ("draws", draws, 1), ("max_tree_depth", max_tree_depth, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise SpecError(name, f"an integer >= {lo}, got {v!r}")
    if not isinstance(target_accept, (int, float)) or not 0 < target_accept < 1:
        raise SpecError("target_accept", f"a number in (0, 1), got {target_accept!r}")
    if method not in METHODS:
        raise SpecError("method", f"{method!r}; one of {', '.join(METHODS)}")


def _arguments(cm: Compiled, consts: list[np.ndarray], seed: int, chain_ids: list[int],
               init: dict[str, Any] | None, adaptation: dict[str, Any] | None, s: Settings,
               dev: Any) -> tuple[Any, ...]:
    n, dim = len(chain_ids), cm.dim
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
            z = np.asarray(cm.unconstrain(init, c))
        except (ValueError, TypeError) as e:
            raise SpecError("init", f"outside the support of the model's variables ({e})") from None
        if not np.all(np.isfinite(z)):
            raise SpecError("init", "outside the support of the model's variables")
        init_z = np.broadcast_to(z, (n, dim)).copy()
    step, imm, pos = np.ones(n), np.ones((n, dim)), np.zeros((n, dim))
    if adaptation is not None:
        try:
            step = _per_chain(adaptation["step_size"], n, ())
            imm = _per_chain(adaptation["inverse_mass_matrix"], n, (dim,))
            if adaptation.get("positions") is not None:
                pos = _per_chain(adaptation["positions"], n, (dim,))
        except (KeyError, ValueError, TypeError) as e:
            raise SpecError("adaptation", f"step_size, inverse_mass_matrix ({dim},) and "
                            f"positions (chains, {dim}) expected: {e}") from None
        if not (np.all(np.isfinite(step)) and np.all(step > 0) and np.all(imm > 0)):
            raise SpecError("adaptation", "step size and inverse mass matrix must be finite and > 0")
    return (c, put(np.uint32(seed)), put(np.asarray(chain_ids, np.int64)), put(init_z), put(step),
            put(imm), put(pos), put(np.int64(next(_RUN_IDS))))


def _per_chain(value: Any, n: int, trailing: tuple[int, ...]) -> np.ndarray:
    """One row per chain: a shared value broadcast, or per-chain rows cycled over padding."""
    a = np.asarray(value, dtype=np.float64)
    if a.shape == trailing:
        return np.broadcast_to(a, (n, *trailing)).copy()
    a = a.reshape(-1, *trailing)
    return a[np.arange(n) % len(a)]


def _assemble(out: dict[str, Any], chain_ids: list[int], cm: Compiled) -> dict[str, Any]:
    samples = {k: np.asarray(v) for k, v in out["samples"].items()}
    stats = {k: np.asarray(v) for k, v in out["stats"].items()}
    warnings: list[str] = []
    failed: list[int] = []
    for j, ch in enumerate(chain_ids):
        problems = []
        if not bool(out["init_ok"][j]):
            problems.append("no finite initial point in 100 tries")
        if any(not np.all(np.isfinite(v[j])) for v in samples.values()):
            problems.append("NaN or inf in its draws")
        ndiv = int(stats["diverging"][j].sum())
        if ndiv == stats["diverging"].shape[1]:
            problems.append("every draw diverged")
        if problems:
            failed.append(ch)
            warnings.append(f"chain {ch} failed numerically: " + "; ".join(problems))
        elif ndiv:
            warnings.append(f"chain {ch}: {ndiv} divergent transition(s) after warmup")
        if not math.isfinite(float(stats["step_size"][j])):
            warnings.append(f"chain {ch}: adapted step size is not finite")
    return {"chains": chain_ids, "samples": samples, "stats": stats,
            "log_likelihood": {k: np.asarray(v) for k, v in out["log_likelihood"].items()},
            "observed": {k: list(v) for k, v in cm.observed.items()},
            "warnings": warnings, "failed_chains": failed,
            "_last_position": np.asarray(out["last_position"]),
            "_inverse_mass_matrix": np.asarray(out["inverse_mass_matrix"])}

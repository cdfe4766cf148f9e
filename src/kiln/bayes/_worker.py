"""The `bayes` capability inside an agent (see docs/internals.md).

Ops: `sample(state, payload, ctx)` and `warmup(state, payload, ctx)`; `info(state)`.

Payload (`kiln.dispatch` and `kiln.sample` send it):

    {"model": <Model.to_dict() or a NumPyro-function payload>,
     "chains": [chain indices], "options": SampleOptions (_options.py; validated on the driver),
     "init": {name: value} | None,
     "adaptation": {"step_size", "inverse_mass_matrix", "positions"} | None,
     "progress_key": str | None}

`sample` returns

    {"chains": [...], "samples": {name: (n_chains, draws, *shape)},
     "stats": {"step_size": (n_chains,), "acceptance_rate" | "diverging" | "tree_depth" |
               "energy" | "num_steps": (n_chains, draws), "max_tree_depth": (n_chains,)},
     "log_likelihood": {obs_name: (n_chains, draws, *data_shape)},
     "observed": {obs_name: data shape},
     "timing": {"compile_s", "sample_s", "total_s"}, "compiled": bool, "compiles": int,
     "device": str, "device_reason": str, "warnings": [...], "failed_chains": [...],
     "node": str, "agent": str}
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import SpecError
from . import _engine as engine
from ._options import SampleOptions

OPS = ("sample", "warmup")  # the jobs an agent may run (kiln._protocol)

_KEYS = {"model", "chains", "options", "init", "adaptation", "progress_key"}


class State:
    """Per-agent state: the compiled-program cache."""

    def __init__(self, ctx: Any) -> None:
        self.cache = engine.ProgramCache()
        self.platform = getattr(ctx, "platform", "cpu")
        _persistent_compilation_cache()


def _persistent_compilation_cache() -> None:
    # compile time (seconds per model structure) then survives agent restarts
    import jax

    if not jax.config.jax_compilation_cache_dir:
        from kiln._settings import settings

        path = str(settings().jax_cache)
        try:
            os.makedirs(path, exist_ok=True)
            jax.config.update("jax_compilation_cache_dir", path)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
        except OSError:
            pass  # a read-only home: compile in memory only


def _payload(payload: dict[str, Any]) -> tuple[dict[str, Any], SampleOptions]:
    if not isinstance(payload, dict):
        raise SpecError("payload", "a dict")
    extra = set(payload) - _KEYS
    if extra:
        raise SpecError(sorted(extra)[0], f"unknown payload key; known: {', '.join(sorted(_KEYS))}")
    if not isinstance(payload.get("model"), dict):
        raise SpecError("model", "a model dict (Model.to_dict())")
    if "chains" not in payload:
        raise SpecError("chains", "missing: the chain indices to run")
    opts = payload.get("options")
    if not isinstance(opts, SampleOptions):
        # a caller that did not go through kiln.sample / kiln.dispatch: checked here, once
        opts = SampleOptions.parse(dict(opts or {}))
    return payload, opts


def _reporter(ctx: Any, key: str | None, chains: list[int]) -> Any:
    if key is None or ctx is None:
        return None
    node = getattr(ctx, "node", None)

    def report(value: dict[str, Any]) -> None:
        ctx.report(key, {**value, "chains": chains, "node": node})
    return report


def sample(state: State, payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Run the payload's chains on this agent; stops between chunks when `ctx.cancelled()`."""
    p, opts = _payload(payload)
    chains = p["chains"]
    out = engine.run(
        p["model"], chains, options=opts, platform=state.platform, init=p.get("init"),
        adaptation=p.get("adaptation"), should_stop=getattr(ctx, "cancelled", None),
        progress=_reporter(ctx, p.get("progress_key"), list(chains) if not isinstance(chains, int)
                           else list(range(chains))),
        cache=state.cache)
    out.pop("_inverse_mass_matrix", None)
    out.pop("_last_position", None)
    out["node"] = getattr(ctx, "node", None)
    out["agent"] = getattr(ctx, "name", None)
    return out


def warmup(state: State, payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Warm up the payload's chains once; returns pooled step size and mass matrix,
    and each chain's last position, for `sample(adaptation=...)` on any agent."""
    p, opts = _payload(payload)
    out = engine.warmup(p["model"], p["chains"], options=opts, platform=state.platform,
                        init=p.get("init"), should_stop=getattr(ctx, "cancelled", None),
                        cache=state.cache)
    out["node"] = getattr(ctx, "node", None)
    out["agent"] = getattr(ctx, "name", None)
    return out


def info(state: State) -> dict[str, Any]:
    """Compiles so far and cache entries (shown by Cluster.nodes() and kiln.inspect)."""
    return {"platform": state.platform, **state.cache.info()}

"""Cancelling a run inside the sampler, and the program cache under several threads."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from kiln.bayes import HalfNormal, Model, Normal, StudentT
from kiln.bayes import _engine as engine
from kiln.bayes._examples import seed_001
from kiln.errors import CancelledError

# long enough that, unstopped, it would run for tens of seconds
LONG = {"warmup": 500, "draws": 400_000, "log_likelihood": False}


def _flip_after(seconds: float, start: threading.Event | None = None
                ) -> tuple[threading.Event, list[float]]:
    """A flag that a thread sets `seconds` after `start` is set (or after now)."""
    flag, when = threading.Event(), []

    def flip() -> None:
        if start is not None:
            start.wait(120)
        time.sleep(seconds)
        when.append(time.monotonic())
        flag.set()
    threading.Thread(target=flip, daemon=True).start()
    return flag, when


def _compile_only(model: dict, cache: engine.ProgramCache, **opts) -> None:
    """Compile the programs of a run without running it (it stops right after compiling)."""
    checks = iter(range(10))
    with pytest.raises(CancelledError, match="after compiling"):
        engine.run(model, 4, seed=1, cache=cache, should_stop=lambda: next(checks) >= 2, **opts)


def test_a_stopped_run_raises_cancelled_error_between_chunks_of_draws():
    cache, model = engine.ProgramCache(), seed_001().to_dict()
    _compile_only(model, cache, **LONG)
    drawing = threading.Event()      # the flag flips 0.5 s into the draws, not the warm-up

    def progress(p: dict) -> None:
        if p["phase"] == "sampling":
            drawing.set()
    flag, when = _flip_after(0.5, start=drawing)
    with pytest.raises(CancelledError) as e:
        engine.run(model, 4, seed=1, cache=cache, should_stop=flag.is_set, progress=progress,
                   **LONG)
    stopped = time.monotonic()
    msg = str(e.value)
    assert msg.startswith("sampling of chains [0, 1, 2, 3] was cancelled after ")
    done = int(msg.split("after ")[1].split(" of ")[0])
    assert msg.endswith(f"of {LONG['draws']} draws") and 0 < done < LONG["draws"]
    # within the bound: one chunk (CHUNK_SECONDS, sized from the measured speed) plus 1 s,
    # with room for a loaded 2-core machine; the unstopped run takes ~20 s
    assert stopped - when[0] <= 1.0 + 4 * engine.CHUNK_SECONDS + 2.0


def test_a_stopped_warmup_raises_before_any_draw():
    cache, model = engine.ProgramCache(), seed_001().to_dict()
    opts = {"warmup": 300_000, "draws": 1, "log_likelihood": False}
    _compile_only(model, cache, **opts)
    flag, _ = _flip_after(0.5)
    with pytest.raises(CancelledError, match=r"after \d+ of 300000 warm-up steps"):
        engine.warmup(model, 4, seed=1, warmup=300_000, cache=cache, should_stop=flag.is_set)


def test_a_run_stopped_while_its_model_compiles_stops_before_sampling():
    model = Model().rv("x", StudentT(5.0, 0.0, 1.0)).rv("s", HalfNormal(1.0)).to_dict()
    flag, _ = _flip_after(0.05)      # compiling a new structure takes seconds
    with pytest.raises(CancelledError, match="after the model was built|after compiling"):
        engine.run(model, 4, seed=1, cache=engine.ProgramCache(), should_stop=flag.is_set,
                   warmup=100, draws=100)


def test_a_flag_already_set_stops_the_run_before_it_starts():
    with pytest.raises(CancelledError, match=r"chains \[2, 5\] was cancelled before it started"):
        engine.run(seed_001().to_dict(), [2, 5], should_stop=lambda: True)


def test_a_run_that_is_not_stopped_gives_the_draws_of_an_unwatched_run():
    model = seed_001().to_dict()
    plain = engine.run(model, 4, seed=3, warmup=300, draws=700)
    watched = engine.run(model, 4, seed=3, warmup=300, draws=700, should_stop=lambda: False)
    for k in ("mu", "sigma"):
        np.testing.assert_array_equal(watched["samples"][k], plain["samples"][k])


# -- the program cache ----------------------------------------------------------------


def test_a_compile_never_blocks_a_cache_hit_for_another_key():
    cache = engine.ProgramCache()
    model = seed_001().to_dict()
    engine.run(model, 4, seed=1, warmup=100, draws=100, cache=cache)     # B's program: cached
    compiling, release, a_done = threading.Event(), threading.Event(), threading.Event()

    def slow_build() -> str:       # thread A, inside a compile that waits for the test
        compiling.set()
        release.wait(60)
        return "A's program"

    def thread_a() -> None:
        cache.get("programs", "model A", slow_build)
        a_done.set()
    a = threading.Thread(target=thread_a)
    a.start()
    try:
        assert compiling.wait(30)
        r = engine.run(model, 4, seed=2, warmup=100, draws=100, cache=cache)   # thread B: a hit
        assert r["compiled"] is False
        assert not a_done.is_set()                 # B finished while A was still compiling
    finally:
        release.set()
        a.join(30)
    assert a_done.is_set() and cache.get("programs", "model A", lambda: "again") == ("A's program", False)


def test_two_threads_wanting_one_program_compile_it_once():
    cache = engine.ProgramCache()
    builds, gate = [], threading.Barrier(2)

    def build() -> int:
        builds.append(1)
        time.sleep(0.2)
        return 42

    out = []

    def want() -> None:
        gate.wait()
        out.append(cache.get("programs", "k", build))
    ts = [threading.Thread(target=want) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(builds) == 1 and sorted(b for _, b in out) == [False, True]
    assert {v for v, _ in out} == {42}


def test_every_map_of_the_cache_is_bounded_least_recently_used_first():
    cache = engine.ProgramCache(max_programs=2, max_models=2)
    for y in ([1.0], [1.0, 2.0], [1.0, 2.0, 3.0]):   # three shapes: three models, three programs
        m = Model().rv("mu", Normal(0.0, 1.0)).rv("y", Normal("mu", 1.0)).obs("o", "y", y)
        engine.run(m.to_dict(), 4, warmup=10, draws=10, cache=cache)
    info = cache.info()
    assert info["programs"] == 2 and info["models"] == 2
    assert info["programs_misses"] == 3 and info["models_misses"] == 3


def test_two_models_compile_at_once_in_two_threads():
    # NumPyro's handler stack is process-wide: tracing two models at once must not mix them
    cache, out, errors = engine.ProgramCache(), {}, []
    models = {"a": Model().rv("x", StudentT(4.0, 0.0, 1.0)).to_dict(),
              "b": Model().rv("mu", Normal(0.0, 1.0)).rv("s", HalfNormal(1.0)).to_dict()}

    def go(name: str) -> None:
        try:
            out[name] = engine.run(models[name], 4, seed=1, warmup=50, draws=50, cache=cache)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    ts = [threading.Thread(target=go, args=(n,)) for n in models]
    for t in ts:
        t.start()
    for t in ts:
        t.join(600)
    assert not errors, errors
    assert set(out["a"]["samples"]) == {"x"} and set(out["b"]["samples"]) == {"mu", "s"}
    assert cache.info()["programs_misses"] == 2

"""The agent side of code shipping, on its own: shipped code is kept in a bounded, counted LRU."""

from __future__ import annotations

from kiln._protocol import AgentContext
from kiln.code import _pickling as pickling
from kiln.code import _worker as worker

CTX = AgentContext("kiln-agent:n1:cpu", "n1", "cpu")


def blob(n: int) -> pickling.CodeBlob:
    return pickling.pack_code(lambda x: x + n)


def test_installed_code_runs_and_a_second_run_is_a_cache_hit():
    state = worker.State(CTX)
    code = blob(1)
    worker.install(state, {"blobs": {code.digest: code.data}}, CTX)
    call = pickling.pack_call((41,), {})
    for _ in range(2):
        out = worker.run(state, {"code": code.digest, "calls": [call]}, CTX)
        assert [pickling.unpack(r) for r in out["results"]] == [42]
    cache = worker.info(state)["code_cache"]
    assert (cache["hits"], cache["misses"]) == (2, 0)


def test_the_agent_keeps_at_most_its_bound_of_functions_and_asks_again_for_an_evicted_one():
    state = worker.State(CTX)
    codes = [blob(i) for i in range(worker._MAX_CODE + 1)]
    for code in codes:
        state.put(code.digest, code.data)
    assert len(worker.have(state, {}, CTX)["digests"]) == worker._MAX_CODE
    out = worker.run(state, {"code": codes[0].digest, "calls": []}, CTX)
    assert out == {"missing": codes[0].digest}
    assert worker.info(state)["code_cache"]["evictions"] == 1


class NeedsTwo(Exception):
    def __init__(self, a, b):  # pickles, but does not rebuild from its args
        super().__init__(f"{a}/{b}")


def test_an_exception_that_does_not_rebuild_goes_back_as_its_type_and_text_and_is_logged(caplog):
    def fails(x):
        raise NeedsTwo(x, 2)

    state = worker.State(CTX)
    code = pickling.pack_code(fails)
    with caplog.at_level("DEBUG", logger="kiln"):
        out = worker.run(state, {"code": code.digest, "blob": code.data,
                                 "calls": [pickling.pack_call((1,), {})]}, CTX)
    error = out["error"]
    assert error["pickled"] is None and error["message"] == "1/2"
    assert error["type"].endswith("NeedsTwo")
    assert "NeedsTwo does not survive pickling" in caplog.text

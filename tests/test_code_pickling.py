"""kiln.code._pickling: what ships by value, by reference, and what cannot cross (no cluster)."""

import importlib
import pickle
import subprocess
import sys
import textwrap
import threading

import cloudpickle
import numpy as np
import pytest

from kiln.code import _pickling as pickling
from kiln.errors import BoundaryError


def test_installed_packages_and_the_stdlib_ship_by_reference():
    import json

    import numpyro

    import kiln

    assert not pickling.is_local_module("json", json)
    assert not pickling.is_local_module("numpyro", numpyro)
    assert not pickling.is_local_module("kiln", kiln)
    assert not pickling.is_local_module("sys", sys)


def test_a_file_next_to_the_notebook_is_local(tmp_path, monkeypatch):
    (tmp_path / "kiln_t_localfile.py").write_text("def f(x):\n    return x + 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("kiln_t_localfile")
    try:
        assert pickling.is_local_module("kiln_t_localfile", module)
        assert "kiln_t_localfile" in pickling.register_local_modules()
        assert "kiln_t_localfile" in pickling.registered_modules()
    finally:
        sys.modules.pop("kiln_t_localfile")


def test_a_local_function_loads_in_a_process_that_cannot_import_its_module(tmp_path, monkeypatch):
    (tmp_path / "kiln_t_byvalue.py").write_text(textwrap.dedent("""
        K = 3
        def helper(x):
            return x * K
        def f(x):
            return helper(x) + 1
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("kiln_t_byvalue")
    try:
        blob = pickling.pack_code(module.f)
    finally:
        sys.modules.pop("kiln_t_byvalue")
    # a fresh interpreter whose sys.path lacks tmp_path: by value needs no import
    script = ("import sys, cloudpickle, importlib.util;"
              "assert importlib.util.find_spec('kiln_t_byvalue') is None;"
              "print(cloudpickle.loads(sys.stdin.buffer.read())(4))")
    out = subprocess.run([sys.executable, "-c", script], input=blob.data, capture_output=True,
                         check=True, cwd="/")
    assert out.stdout.decode().strip() == "13"


def test_the_same_function_gives_the_same_digest_and_an_edit_a_new_one():
    w = np.arange(3.0)

    def score(x):
        return float(np.tanh(x @ w).sum())

    a, b = pickling.pack_code(score), pickling.pack_code(score)
    assert a.digest == b.digest and a.name.endswith("score")
    w[0] = 10.0  # the closure's data changed: the code that must run changed
    assert pickling.pack_code(score).digest != a.digest


def test_a_lock_in_the_arguments_is_refused_naming_its_path():
    with pytest.raises(BoundaryError) as info:
        pickling.pack_call((1, {"mu": threading.Lock()}), {})
    assert info.value.path == "args[1]['mu']"


class Holder:
    def __init__(self, inner):
        self.data = [1, 2]
        self.inner = inner


def test_an_unpicklable_attribute_deep_in_an_object_is_named():
    bad = Holder(Holder(threading.Lock()))
    with pytest.raises(BoundaryError) as info:
        pickling.pack_call((), {"state": bad})
    assert info.value.path == "kwargs['state'].inner.inner"
    assert "lock" in str(info.value).lower()


def test_a_function_closing_over_a_lock_is_refused_naming_the_variable():
    lock = threading.Lock()

    def uses_lock():
        with lock:
            return 1

    with pytest.raises(BoundaryError) as info:
        pickling.pack_code(uses_lock)
    assert "lock" in str(info.value)
    assert "uses_lock" in info.value.path


def test_plain_data_travels_as_it_is_and_the_rest_pickled():
    plain = {"x": np.ones(3), "n": [1, 2.0, "a"]}
    packed = pickling.pack(plain, "args")
    assert "plain" in packed and packed["plain"]["x"] is plain["x"]
    holder = Holder(5)
    packed = pickling.pack((holder,), "args")
    assert "pickled" in packed
    back = pickling.unpack(packed)[0]
    assert isinstance(back, Holder) and back.inner == 5


def test_map_items_spread_tuples_and_pass_other_items_whole():
    assert pickling.unpack_call(pickling.pack_item((1, 2), 0, star=True)) == ((1, 2), {})
    assert pickling.unpack_call(pickling.pack_item((1, 2), 0, star=False)) == (((1, 2),), {})
    assert pickling.unpack_call(pickling.pack_item(7, 3, star=False)) == ((7,), {})
    with pytest.raises(BoundaryError) as info:
        pickling.pack_item([threading.Lock()], 3, star=False)
    assert info.value.path == "items[3][0]"


def test_the_ledger_counts_each_shipment_once_per_agent():
    class H:
        def __init__(self, name, node_id):
            self.name, self.node_id = name, node_id

    ledger = pickling.Ledger()
    blob = pickling.pack_code(len)
    a, b = H("kiln-agent:a:cpu", "1"), H("kiln-agent:b:cpu", "2")
    assert not ledger.holds(a, blob.digest)
    ledger.record(a, blob)
    ledger.record(b, blob)
    assert ledger.holds(a, blob.digest) and ledger.holds(b, blob.digest)
    # the same agent name on another cluster (another node id) holds nothing yet
    assert not ledger.holds(H("kiln-agent:a:cpu", "3"), blob.digest)
    ledger.forget(a)
    assert not ledger.holds(a, blob.digest)
    stats = ledger.stats()
    assert stats.count == 2 and stats.bytes == 2 * len(blob.data)
    assert stats.by_agent == {"kiln-agent:a:cpu": 1, "kiln-agent:b:cpu": 1}


def test_a_notebook_class_round_trips_to_the_same_class():
    # cloudpickle tracks classes pickled by value, so what comes back is the driver's class
    class Point:
        def __init__(self, x):
            self.x = x

    data = cloudpickle.dumps(Point(3))
    back = pickle.loads(data)
    assert type(back) is Point and back.x == 3

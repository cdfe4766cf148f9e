"""kiln.call / kiln.map / kiln.remote on the embedded default: code shipped by value."""

import importlib
import importlib.util
import os
import sys
import textwrap
import threading
import uuid

import numpy as np
import pytest

import kiln
from kiln import code
from kiln.errors import BoundaryError, CodeError, RemoteError

NODE = "local"


def _agent_code_info(cluster):
    return cluster.agents(on=NODE)[0].info()["code"]


def test_a_notebook_function_runs_on_the_node(embedded):
    def score(x, w):
        return float(np.tanh(x @ w).sum())

    assert kiln.call(NODE, score, np.ones(3), np.ones(3)) == pytest.approx(np.tanh(3.0))


def test_it_runs_in_the_agent_not_here(embedded):
    assert code.current_node() is None
    where = kiln.call(NODE, lambda: (code.current_node(), os.getpid()))
    assert where[0] == NODE and where[1] != os.getpid()


def test_a_closure_over_a_numpy_array(embedded):
    w = np.linspace(0.0, 1.0, 5)

    def weighted(x):
        return x * w

    np.testing.assert_array_equal(kiln.call(NODE, weighted, 2.0), 2.0 * w)


class Accumulator:
    def __init__(self, start):
        self.total = start

    def add(self, values):
        self.total += sum(values)
        return self


def test_a_class_instance_goes_and_comes_back_as_the_same_class(embedded):
    out = kiln.call(NODE, lambda acc: acc.add([1, 2, 3]), Accumulator(10))
    assert type(out) is Accumulator and out.total == 16


def test_keyword_arguments_and_device_arrays_cross_the_boundary(embedded):
    import jax.numpy as jnp

    def f(a, *, scale):
        import jax.numpy as jnp

        return jnp.asarray(a) * scale  # a jax array comes back as host numpy

    out = kiln.call(NODE, f, jnp.arange(3.0), scale=2.0)
    assert type(out) is np.ndarray
    np.testing.assert_array_equal(out, [0.0, 2.0, 4.0])


def _write_module(directory, name, body):
    path = directory / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    # a later edit must be seen by reload even within the same second
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000 * (1 + body.count("\n"))))
    importlib.invalidate_caches()
    return path


@pytest.fixture
def local_module(tmp_path, monkeypatch):
    """A module in a directory that only this driver has on sys.path (not the agent)."""
    name = f"kiln_local_{uuid.uuid4().hex[:8]}"
    _write_module(tmp_path, name, """
        OFFSET = 1
        def helper(x):
            return x + OFFSET
        def f(x):
            return helper(x) * 10
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    yield module, tmp_path
    sys.modules.pop(name, None)


def test_a_local_module_the_node_cannot_import_ships_by_value(embedded, local_module):
    module, _ = local_module
    name = module.__name__
    # the agent really cannot import it by name ...
    assert kiln.call(NODE, lambda n: importlib.util.find_spec(n) is None, name) is True
    # ... yet its function runs there
    assert kiln.call(NODE, module.f, 4) == 50


def test_an_edited_module_ships_again_and_an_unchanged_one_does_not(embedded, local_module):
    module, directory = local_module
    before = code.shipments().count
    assert kiln.call(NODE, module.f, 1) == 20
    assert code.shipments().count == before + 1
    assert kiln.call(NODE, module.f, 2) == 30
    assert kiln.call(NODE, module.f, 3) == 40
    assert code.shipments().count == before + 1  # unchanged: not shipped again

    _write_module(directory, module.__name__, """
        OFFSET = 1
        def helper(x):
            return x + OFFSET
        def f(x):
            return helper(x) * 100   # edited
    """)
    importlib.reload(module)
    assert kiln.call(NODE, module.f, 1) == 200
    assert code.shipments().count == before + 2
    assert code.shipments().by_name["f"] >= 2


def test_an_agent_that_lost_its_code_gets_it_again(embedded):
    def triple(x):
        return 3 * x

    assert kiln.call(NODE, triple, 2) == 6
    h = embedded.agents(on=NODE)[0]
    blob = code._pickling.pack_code(triple)
    code._pickling.ledger.forget(h, blob.digest)  # the driver's record and the agent disagree
    assert h.invoke("code", "run", {"code": "0" * 64, "calls": []}) == {"missing": "0" * 64}
    assert kiln.call(NODE, triple, 5) == 15


def test_a_remote_zero_division_comes_back_as_zero_division(embedded):
    def divide(a, b):
        return a / b

    with pytest.raises(ZeroDivisionError) as info:
        kiln.call(NODE, divide, 1, 0)
    err = info.value
    assert err.node == NODE
    assert "ZeroDivisionError" in err.remote_traceback and "divide" in err.remote_traceback
    assert any(NODE in note and "remote traceback" in note for note in err.__notes__)


class NotebookError(Exception):
    pass


def test_an_exception_class_defined_here_is_caught_as_itself(embedded):
    def fail():
        raise NotebookError("bad input")

    with pytest.raises(NotebookError, match="bad input") as info:
        kiln.call(NODE, fail)
    assert info.value.node == NODE


class NeedsTwoArguments(Exception):
    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")


def test_an_exception_that_cannot_be_rebuilt_is_a_remote_error(embedded):
    def fail():
        raise NeedsTwoArguments("x", "y")

    with pytest.raises(RemoteError) as info:
        kiln.call(NODE, fail)
    err = info.value
    assert err.node == NODE and err.type_name.endswith("NeedsTwoArguments")
    assert "x/y" in str(err) and "fail" in err.remote_traceback


def test_unpicklable_arguments_are_refused_naming_the_path_and_nothing_is_sent(embedded):
    def f(*args, **kwargs):
        return 1

    kiln.call(NODE, f)  # warm: the code is there, so only the call itself could be sent
    shipped, calls = code.shipments().count, _agent_code_info(embedded)["calls"]
    with pytest.raises(BoundaryError) as info:
        kiln.call(NODE, f, 1, {"mu": threading.Lock()})
    assert info.value.path == "args[1]['mu']"

    class Model:
        def __init__(self):
            self.cache = {"lock": threading.RLock()}

    with pytest.raises(BoundaryError) as info:
        kiln.call(NODE, f, options=Model())
    assert info.value.path == "kwargs['options'].cache['lock']"
    assert code.shipments().count == shipped
    assert _agent_code_info(embedded)["calls"] == calls


def test_code_needing_a_module_the_node_lacks_is_a_code_error(embedded, tmp_path, monkeypatch):
    # an "installed" package: a distribution-less module we force to ship by reference
    name = f"kiln_byref_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("def g():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    code._pickling._decisions[name] = False  # decided: by reference
    try:
        with pytest.raises(CodeError) as info:
            kiln.call(NODE, module.g)
        assert info.value.node == NODE and name in str(info.value)
        with pytest.raises(CodeError) as info:
            kiln.map(module.g, [(), ()])
        assert info.value.node == NODE and name in str(info.value)
    finally:
        sys.modules.pop(name, None)


def test_map_returns_results_in_order(embedded):
    def score(x, w):
        return float(np.tanh(x @ w).sum())

    items = [(np.ones(3) * i, np.ones(3)) for i in range(100)]
    assert kiln.map(score, items, nodes="all") == [score(*item) for item in items]


def test_map_passes_non_tuple_items_whole_and_unordered_keeps_every_result(embedded):
    out = kiln.map(lambda d: d["k"] * 2, [{"k": i} for i in range(30)], ordered=False,
                   chunksize=4)
    assert sorted(out) == [2 * i for i in range(30)]


def test_map_can_show_a_progress_bar(embedded, capsys):
    assert kiln.map(abs, [-1, -2, -3, -4], chunksize=1, progress=True) == [1, 2, 3, 4]
    err = " ".join(capsys.readouterr().err.split())
    assert "abs" in err and "4/4" in err and "local: 4" in err, err


def test_map_names_the_item_that_raised(embedded):
    def inverse(x):
        return 1 / x

    with pytest.raises(ZeroDivisionError) as info:
        kiln.map(inverse, [3, 2, 1, 0, 5], chunksize=2)
    assert info.value.item == 3
    assert any("item 3" in note for note in info.value.__notes__)


def test_the_remote_decorator_runs_on_its_node(embedded):
    @kiln.remote(node=NODE)
    def device_name():
        import jax

        return str(jax.devices()[0])

    assert "cpu" in device_name().lower()
    assert device_name.on(NODE)() == device_name()
    assert device_name.map([(), ()]) == [device_name()] * 2
    assert device_name.local() == device_name()

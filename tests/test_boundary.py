"""kiln._boundary: what may cross between driver and agent (seed 000's fix 5)."""

import io
import threading

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kiln._boundary import to_wire
from kiln.errors import BoundaryError


def test_torch_and_jax_arrays_become_host_numpy():
    out = to_wire([torch.arange(3.0), {"mu": jnp.ones(2)}])
    assert isinstance(out[0], np.ndarray) and out[0].tolist() == [0.0, 1.0, 2.0]
    assert isinstance(out[1]["mu"], np.ndarray) and out[1]["mu"].tolist() == [1.0, 1.0]


def test_a_lock_is_refused_naming_its_path():
    with pytest.raises(BoundaryError) as err:
        to_wire((1.0, {"mu": threading.Lock()}))
    assert err.value.path == "args[1]['mu']"
    assert "lock" in str(err.value)


@pytest.mark.parametrize("bad, word", [
    (io.StringIO("x"), "open file"),
    ((i for i in range(3)), "generator"),
    (threading.Event(), "event"),
])
def test_process_local_objects_are_refused(bad, word):
    with pytest.raises(BoundaryError, match=word):
        to_wire({"x": [bad]}, root="kwargs")


def test_a_self_containing_list_is_refused():
    loop = [1]
    loop.append(loop)
    with pytest.raises(BoundaryError, match=r"args\[1\]"):
        to_wire(loop)


def test_plain_data_passes_unchanged():
    value = {"a": [1, 2.5, "s", None], "b": np.zeros((2, 2)), "c": (True, b"x")}
    out = to_wire(value)
    assert out["a"] == value["a"] and out["c"] == value["c"]
    assert out["b"] is value["b"]

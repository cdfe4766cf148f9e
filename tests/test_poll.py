"""kiln's one polling loop (``wait_until``) and its one TCP probe (``refusal``)."""

from __future__ import annotations

import socket
import time

import pytest

from kiln._poll import refusal, wait_until


def test_wait_until_returns_once_ready_is_true():
    answers = iter([False, False, True])
    wait_until(lambda: next(answers), timeout=5, what="the third answer", interval=0.01)


def test_wait_until_past_its_timeout_names_what_it_waited_for():
    began = time.monotonic()
    with pytest.raises(TimeoutError, match=r"waited 0.2 s for the gateway to start"):
        wait_until(lambda: False, timeout=0.2, what="the gateway to start", interval=0.01)
    assert time.monotonic() - began < 2


def test_an_error_raised_by_ready_stops_the_wait_at_once():
    def ready() -> bool:
        raise RuntimeError("the process died")

    with pytest.raises(RuntimeError, match="the process died"):
        wait_until(ready, timeout=60, what="a dead process")


def test_refusal_is_none_where_something_listens_and_the_error_where_nothing_does():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert refusal(f"127.0.0.1:{port}", timeout=2) is None
    assert isinstance(refusal(f"127.0.0.1:{port}", timeout=2), OSError)


@pytest.mark.parametrize("address", ["auto", "ray://head:10001", "head"])
def test_refusal_does_not_probe_rays_own_address_forms(address):
    assert refusal(address, timeout=0.1) is None

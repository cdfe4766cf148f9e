"""Asking whether something is ready: kiln's one polling loop, and its one TCP probe.

``wait_until(ready, timeout, what)`` asks ``ready()`` every ``interval`` seconds until it
returns true, and raises ``TimeoutError`` naming ``what`` when ``timeout`` seconds pass first.
``ready`` may raise to stop waiting early: a process that died will never be ready.

``refusal(address)`` is why nothing accepts a TCP connection at ``HOST:PORT`` (None when
something does): it imports no Ray, so the gateway's supervisor can probe a head too.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable


def wait_until(ready: Callable[[], bool], timeout: float, what: str, *,
               interval: float = 0.1) -> None:
    """Return once ``ready()`` is true; ``TimeoutError`` ("waited N s for WHAT") after ``timeout``.

    ``ready`` is asked at least once, however short the timeout.
    """
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"waited {timeout:g} s for {what}")
        time.sleep(interval)


def refusal(address: str, timeout: float) -> OSError | None:
    """The error a TCP connection to ``HOST:PORT`` meets; None when it is accepted, or when
    ``address`` is one of Ray's own forms ("auto", "ray://..."), with nothing to probe."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return None
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)),
                                 timeout=timeout).close()
    except OSError as err:
        return err
    return None

"""Where shipped code runs: ``kiln.code.current_node()`` inside a kiln call."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

from kiln._protocol import Context

_here = threading.local()


class Where(NamedTuple):
    """The node, device and agent running a kiln call."""

    node: str
    device: str
    agent: str


def current() -> Where | None:
    """Where the code calling this runs, or None outside a kiln call (on the driver)."""
    return getattr(_here, "where", None)


def current_node() -> str | None:
    """The name of the node running this code, or None outside a kiln call."""
    where = current()
    return where.node if where else None


@contextmanager
def running(ctx: Context) -> Iterator[None]:
    """Mark the calling thread as running a kiln call for the agent of ``ctx``."""
    previous = getattr(_here, "where", None)
    _here.where = Where(ctx.node, ctx.device, ctx.name)
    try:
        yield
    finally:
        _here.where = previous

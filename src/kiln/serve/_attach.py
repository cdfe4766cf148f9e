"""The gateway's hold on the cluster: attached, lost, or not (yet) attached.

States:

- ``attached``: connected; the head's GCS port answers.
- ``lost``: it was attached and the head stopped answering (two probes in a row, one per
  tick). Nothing more is asked of Ray: a Ray driver whose head restarted as a new cluster
  aborts the process the moment it reaches the new GCS (``WrongClusterID``), and one whose
  local raylet died exits on its next call to it. So ``on_lost`` is called once, and under
  ``kiln serve`` the supervisor starts a fresh worker process and retires this one once the
  new one serves (``kiln.serve._supervisor``; from a notebook, ``SupervisedServer``). Without
  a supervisor (``BackgroundServer``) the gateway stays degraded, serving its fallback. ``on_returned`` is
  called once when, lost, the head listens again: the worker stops accepting and exits
  before its Ray driver reaches the new cluster.
- ``detached``: not connected, but an address is known (``--allow-no-cluster``, or a fresh
  worker after a loss): each tick checks whether the head listens and attaches when it does.
- ``off``: no cluster at all (``create_app(None)``): fallback only.

The probe is a TCP connect to the head's GCS port, not a Ray call: a Ray call to a dead GCS
hangs (for ``gcs_rpc_server_reconnect_timeout_s``) and stays pending in the process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from kiln._poll import refusal

log = logging.getLogger("kiln.serve")

# A Ray driver exits when its GCS has been unreachable this long (Ray's default is 60 s).
# The gateway outlives a head that is down for longer: it sets this before Ray starts.
RECONNECT_TIMEOUT_ENV = "RAY_gcs_rpc_server_reconnect_timeout_s"
RECONNECT_TIMEOUT_S = str(7 * 24 * 3600)


def listening(address: str | None, timeout: float = 1.0) -> bool:
    """Whether something accepts a TCP connection at ``HOST:PORT`` (True for Ray's own
    address forms, "auto", "ray://...": nothing to probe)."""
    return bool(address) and refusal(address, timeout) is None


class ClusterLink:
    """See the module docstring. ``connect(address)`` attaches (``kiln.connect``)."""

    def __init__(self, cluster: Any = None, *, address: str | None = None,
                 connect: Callable[[str | None], Any] | None = None,
                 on_lost: Callable[[], None] | None = None,
                 on_returned: Callable[[], None] | None = None, lost_after: int = 2,
                 attach_every_s: float = 1.0) -> None:
        self.cluster = cluster
        self.address = address or getattr(cluster, "address", None)
        self.connect = connect
        self.on_lost = on_lost
        self.on_returned = on_returned
        self.lost_after = lost_after
        self.attach_every_s = attach_every_s
        self.error = ""
        self.lost_since: float | None = None
        self.attached_at: float | None = time.time() if cluster is not None else None
        self._misses = 0
        self.lost = asyncio.Event()  # set once lost: calls waiting on its agents give up
        # Set when an attach succeeds: the gateway looks for agents then, not at its next tick.
        self.attached = asyncio.Event()
        self._attaching: asyncio.Future | None = None
        self._next_attempt = 0.0
        if cluster is not None:
            self.state = "attached"
        elif connect is not None:
            self.state = "detached"
        else:
            self.state = "off"

    async def start(self) -> None:
        if self.state == "detached":
            await self.tick()

    async def stop(self) -> None:
        if self._attaching is not None and not self._attaching.done():
            self._attaching.cancel()

    async def tick(self) -> None:
        """One look at the cluster (called once per ``refresh_s`` by the gateway)."""
        if self.state == "attached":
            if await asyncio.to_thread(listening, self.address):
                self._misses = 0
                return
            self._misses += 1
            if self._misses >= self.lost_after:
                self._lose(f"the head at {self.address} stopped answering")
        elif self.state == "detached":
            self._try_attach()
        elif self.state == "lost" and self.on_returned is not None:
            if await asyncio.to_thread(listening, self.address):
                # A head listens again: a new cluster, which this process's Ray driver would
                # abort on. Stop serving here (gracefully) before it does.
                callback, self.on_returned = self.on_returned, None
                callback()

    def _lose(self, why: str) -> None:
        self.state, self.error, self.lost_since = "lost", why, time.time()
        self.lost.set()
        log.error("kiln serve: cluster lost: %s; serving from the fallback", why)
        if self.on_lost is not None:
            try:
                self.on_lost()
            except Exception as err:  # the supervisor's pipe is gone: stay degraded
                log.warning("kiln serve: could not ask for a fresh worker: %s", err, exc_info=True)

    def _try_attach(self) -> None:
        if self._attaching is not None and not self._attaching.done():
            return
        if time.monotonic() < self._next_attempt or self.connect is None:
            return
        self._next_attempt = time.monotonic() + self.attach_every_s
        self._attaching = asyncio.ensure_future(asyncio.to_thread(self._attach))
        self._attaching.add_done_callback(self._attach_done)

    def _attach_done(self, attempt: asyncio.Future) -> None:
        if self.state == "attached":
            self.attached.set()

    def _attach(self) -> None:
        if self.address and not listening(self.address):
            self.error = f"nothing listens at {self.address} (is the head up?)"
            return
        try:
            cluster = self.connect(self.address)  # type: ignore[misc]
        except Exception as err:  # noqa: BLE001 - logged, one line an attempt, and kept for
            # /readyz; the next attempt comes in attach_every_s
            self.error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            log.warning("kiln serve: attaching to %s failed: %s", self.address, self.error)
            return
        self.cluster, self.state, self.error = cluster, "attached", ""
        self.address = self.address or getattr(cluster, "address", None)
        self.attached_at, self._misses = time.time(), 0
        log.warning("kiln serve: attached to the cluster at %s", self.address)

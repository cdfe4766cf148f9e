"""`kiln up --preload ...`: the head's agents start and get warm before `kiln up` returns.

Without it, a node's agent starts when the first driver asks for it: a gateway re-attaching
after a head restart created the agent only as `kiln up` returned, then waited for its start-up
checks (~4 s here) and its model load (~4-8 s on a loaded 2-core machine) before an agent
answered again (bench/gateway_faults.py, ``head_restart``). Started by `kiln up` itself, the
agent is warm when `kiln up` returns: a driver that attaches then finds it ready (Ray's named
actor, ``kiln-agent:<node>:<device>``, whoever created it).

`kiln up` runs ``python -m kiln._cli_warm ADDRESS NODE TIMEOUT``: a short-lived driver that
starts (or finds) the node's agents, waits until they have passed their checks and loaded what
``--preload`` names, prints ``{"warm": [...], "problems": [...]}`` and disconnects; the agents
belong to the cluster and stay. A process of its own: Ray, once imported, keeps the auth token
it found then, and `kiln up` imports Ray before it makes the head's token.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from kiln._poll import wait_until


def warm_node(address: str, node: str, timeout: float) -> tuple[list[str], list[str]]:
    """Start the agents of ``node`` on the cluster at ``address`` and wait (``timeout`` s in
    all) until each has loaded what its ``KILN_AGENT_PRELOAD`` names.

    Returns (warm agents, problems): a problem says which agent and why (refused its checks,
    a preload that failed, not warm in time). This process is connected on return.
    """
    import kiln

    deadline = time.monotonic() + timeout
    cluster = kiln.connect(address, start_timeout=timeout)
    mine = [n for n in cluster.nodes() if n.name == node]
    records = [a for n in mine for a in n.agents]
    if not records:
        return [], [f"no agent of node {node} started (`kiln doctor --address {address}` "
                    "says why)"]
    warm, problems = [], []
    for rec in records:
        if rec.state != "ready" or rec.handle is None:
            problems.append(f"{rec.name}: {rec.state} {rec.reason}".strip())
            continue
        info = _when_warm(rec.handle, deadline)
        if info is None:
            problems.append(f"{rec.name} was still loading what --preload names after "
                            f"{timeout:g} s")
        elif info.get("preload_errors"):
            problems.append(f"{rec.name}: preload failed: " + "; ".join(
                f"{cap}: {why}" for cap, why in info["preload_errors"].items()))
        else:
            warm.append(rec.name)
    return warm, problems


def _when_warm(handle: Any, deadline: float) -> dict[str, Any] | None:
    """The agent's info once its warm-up is over; None if it is not over by ``deadline``."""
    seen: dict[str, Any] = {}

    def warm() -> bool:
        try:
            seen.update(handle.info(timeout=max(1.0, deadline - time.monotonic())))
        except Exception:  # noqa: BLE001 - restarting after a crash: Ray restarts it, ask again
            return False
        return not seen.get("rewarming", True)

    try:
        wait_until(warm, max(0.0, deadline - time.monotonic()), f"{handle.name} to warm up",
                   interval=0.1)
    except TimeoutError:
        return None
    return seen if "rewarming" in seen else None


def main(argv: list[str]) -> None:
    import kiln
    from kiln.errors import KilnError

    address, node, timeout = argv[0], argv[1], float(argv[2])
    try:
        warm, problems = warm_node(address, node, timeout)
    except KilnError as err:
        warm, problems = [], [str(err).splitlines()[0]]
    finally:
        kiln.shutdown()
    print(json.dumps({"warm": warm, "problems": problems}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

"""The gateway under load while faults happen (issue 12): does any request fail, and how soon
does it serve from its agents again?

A real head (`kiln up`, in a scratch HOME and RAY_TMPDIR of its own), a real `kiln serve
--address <head> --allow-no-cluster`, and ``--clients`` aiohttp clients sending one-text
/infer requests back to back. Each fault runs under that load:

- ``agent_kill``: SIGKILL of the agent process (Ray restarts it; the fallback covers the gap);
- ``slow_clients``: 2,000 idle connections and 50 that send half a request;
- ``bad_input``: lone surrogates, a chunked body over the limit, a body that never arrives,
  requests past their deadline, sent beside the load;
- ``head_restart``: the head's processes are SIGKILLed, and `kiln up` starts a new one on the
  same port 10 s later;
- ``no_cluster_fallback_off``: a gateway with no cluster and ``--fallback off`` (the one case
  where requests are expected to fail: 503 saying why).

For each: requests sent, failed (any status but 200, or no answer), served by the fallback,
recovery (seconds from the end of the fault to the first answer from an agent to a request sent
after it),
and the gateway's RSS (supervisor + workers) before and after. Goals: failed 0 (but the last
case), recovery <= 10 s.

    python bench/gateway_faults.py                     # writes bench/results/gateway-faults-vm.json
    python bench/gateway_faults.py --clients 16 --out /tmp/x.json
    python bench/gateway_faults.py --faults head_restart --out /tmp/x.json   # one fault, ~1.5 min

For ``head_restart`` the result also has ``steps_s``: how long `kiln up` took (and of that, how
long it waited for the head's agents to warm up, with ``--preload``); seconds from `kiln up`
returning to the gateway attaching (negative: before it returned), to its first ready agent
and to the first answer from one (also counted from `kiln up` starting); and the agent's own
account of its start (``startup``: when its process began, imports, checks, model load).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from heads import BIN, Head, free_port  # noqa: E402

TOKEN = "kiln-gateway-faults-bench-token"


class Gateway:
    def __init__(self, head: Head, *args: str) -> None:
        # --timeout-body 5: the bad-input fault sends bodies that never arrive
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = head.root / f"serve-{self.port}.log"
        self.proc = subprocess.Popen(
            [str(BIN / "kiln"), "serve", "--port", str(self.port), "--allow-no-cluster",
             "--timeout", "30", "--timeout-body", "5", *args],
            env=head.env(RAY_TMPDIR=str(head.root / "gw")),
            stdout=subprocess.DEVNULL, stderr=self.log.open("wb"), start_new_session=True)

    def rss_mb(self) -> float:
        try:
            procs = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children()]
            return round(sum(p.memory_info().rss for p in procs) / 2**20, 1)
        except psutil.Error:
            return float("nan")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


class Load:
    """``clients`` coroutines sending /infer back to back; every answer is kept, as
    (answered at, status, served by the fallback, sent at)."""

    def __init__(self, url: str, clients: int) -> None:
        self.url, self.clients = url, clients
        self.results: list[tuple[float, Any, bool, float]] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(self.clients)]

    async def _client(self, c: int) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            sent = time.monotonic()
            try:
                async with self.session.post(self.url + "/infer",
                                             json={"texts": [f"client {c} text {i}"]}) as r:
                    body = await r.json() if r.status == 200 else None
                    self.results.append((time.monotonic(), r.status,
                                         bool(body and body["fallback"]), sent))
            except (TimeoutError, aiohttp.ClientError) as err:
                self.results.append((time.monotonic(), type(err).__name__, False, sent))
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.session.close()

    def since(self, t: float) -> list[tuple[float, Any, bool, float]]:
        return [r for r in self.results if r[0] >= t]


async def wait_until(check, timeout: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    return None


async def get_json(url: str) -> dict:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s, \
                s.get(url) as r:
            return await r.json()
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return {}


def summary(name: str, results: list, ended: float | None, gateway: Gateway, rss_before: float,
            note: str = "", steps: dict[str, Any] | None = None) -> dict[str, Any]:
    # recovery: the first answer from an agent to a request sent after the fault ended (an
    # answer already on its way when an agent was killed does not count)
    agent_ok = [t for t, s, fb, sent in results if s == 200 and not fb and ended is not None
                and sent >= ended]
    out = {
        "fault": name,
        "requests": len(results),
        "failed": sum(1 for _, s, _, _ in results if s != 200),
        "failed_by_status": {str(k): sum(1 for _, s, _, _ in results if s == k)
                             for k in {s for _, s, _, _ in results if s != 200}},
        "served_by_fallback": sum(1 for _, s, fb, _ in results if s == 200 and fb),
        "recovery_s": round(min(agent_ok) - ended, 1) if agent_ok else None,
        "gateway_rss_mb_before": rss_before,
        "gateway_rss_mb_after": gateway.rss_mb(),
    }
    if ended is not None and out["failed"]:
        # when the first failures came, seconds from the fault's end (negative: before it)
        out["failed_at_s"] = [round(t - ended, 1) for t, s, _, _ in results if s != 200][:10]
        # what the supervisor and workers said meanwhile, to tell a worker's crash from a
        # handover (the log is in a scratch directory that goes with the head)
        lines = gateway.log.read_text(errors="replace").splitlines()
        out["gateway_log"] = [ln[:300] for ln in lines
                              if ln.startswith("kiln serve") or "rror" in ln or "abort" in ln
                              or "Check failed" in ln][-20:]
    if steps:
        out["steps_s"] = steps
    if note:
        out["note"] = note
    print(json.dumps(out), flush=True)
    return out


async def agent_pid(url: str) -> int | None:
    agents = (await get_json(url + "/cluster")).get("agents") or []
    online = [a for a in agents if a.get("status") == "online"]
    return online[0]["info"].get("pid") if online else None


FAULTS = ("agent_kill", "slow_clients", "bad_input", "head_restart", "no_cluster_fallback_off")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    chosen = [f for f in FAULTS if f in args.faults]
    results: list[dict[str, Any]] = []
    on_head = [f for f in chosen if f != "no_cluster_fallback_off"]
    if on_head:
        preload = ("--preload", args.preload) if args.preload else ()
        if args.preload_timeout is not None:
            preload += ("--preload-timeout", str(args.preload_timeout))
        head = Head(TOKEN, prefix="kgf", copy_kiln=True, up_args=preload)
        gateway = None
        try:
            head.up()
            gateway = Gateway(head, "--address", head.address)
            ready = await wait_until(
                lambda: _is(get_json(gateway.url + "/healthz"), "agents_ready", 1), 300)
            if ready is None:
                raise SystemExit(f"the gateway did not attach:\n{gateway.log.read_text()[-2000:]}")
            load = Load(gateway.url, args.clients)
            await load.start()
            await asyncio.sleep(args.settle)
            for fault in on_head:
                results.append(await ON_HEAD[fault](args, head, gateway, load))
            await load.stop()
        finally:
            if gateway is not None:
                gateway.stop()
            head.remove()
    if "no_cluster_fallback_off" in chosen:
        results.append(await no_cluster_fallback_off(args))
    return {"clients": args.clients, "machine": f"{os.cpu_count()} cores",
            "loadavg": [round(x, 2) for x in os.getloadavg()], "preload": args.preload,
            "preload_timeout": args.preload_timeout,
            "when": time.strftime("%Y-%m-%d %H:%M:%S"), "faults": results}


async def agent_kill(args, head: Head, gateway: Gateway, load: Load) -> dict[str, Any]:
    rss, start = gateway.rss_mb(), time.monotonic()
    pid = await agent_pid(gateway.url)
    os.kill(pid, signal.SIGKILL)
    ended = time.monotonic()
    await wait_until(lambda: _agent_answered(load, ended), args.recover)
    await asyncio.sleep(args.settle)
    return summary("agent_kill", load.since(start), ended, gateway, rss,
                   "recovery includes Ray restarting the agent process")


async def slow_clients(args, head: Head, gateway: Gateway, load: Load) -> dict[str, Any]:
    rss, start = gateway.rss_mb(), time.monotonic()
    idle = []
    for _ in range(2000):
        idle.append(socket.create_connection(("127.0.0.1", gateway.port), timeout=10))
    for _ in range(50):
        sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
        sock.sendall(b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"te")
        idle.append(sock)
    await asyncio.sleep(args.fault)
    for sock in idle:
        sock.close()
    ended = time.monotonic()
    await wait_until(lambda: _agent_answered(load, ended), args.recover)
    await asyncio.sleep(args.settle)
    return summary("slow_clients", load.since(start), ended, gateway, rss)


async def bad_input(args, head: Head, gateway: Gateway, load: Load) -> dict[str, Any]:
    rss, start = gateway.rss_mb(), time.monotonic()
    bad = await _bad_input(gateway.url, args.fault)
    ended = time.monotonic()
    await wait_until(lambda: _agent_answered(load, ended), args.recover)
    await asyncio.sleep(args.settle)
    return summary("bad_input", load.since(start), ended, gateway, rss,
                   f"bad requests sent beside the load, answered: {bad}")


async def head_restart(args, head: Head, gateway: Gateway, load: Load) -> dict[str, Any]:
    rss, start = gateway.rss_mb(), time.monotonic()
    head.kill()
    await asyncio.sleep(args.head_down)
    watch = Steps(gateway.url)
    watched = asyncio.create_task(watch.run())
    began = time.monotonic()
    await asyncio.to_thread(head.up)
    ended = time.monotonic()
    await wait_until(lambda: _agent_answered(load, ended), args.recover * 6)
    watch.stop.set()
    await watched
    answered = [t for t, s, fb, sent in load.results if sent >= ended and s == 200 and not fb]
    warmed = re.search(r"Agents warm \(.*\) in ([0-9.]+) s", " ".join(head.up_output.split()))
    steps = {"kiln_up": round(ended - began, 1),
             "kiln_up_warming_agents": float(warmed[1]) if warmed else None,
             **watch.since(ended),
             "first_agent_answer": round(answered[0] - ended, 1) if answered else None,
             "first_agent_answer_from_kiln_up_start": (round(answered[0] - began, 1)
                                                       if answered else None),
             "agent": await agent_startup(gateway.url, ended)}
    await asyncio.sleep(args.settle)
    return summary("head_restart", load.since(start), ended, gateway, rss,
                   f"head down {args.head_down} s; recovery counts from `kiln up` returning "
                   "(with --preload it returns once the head's agent is warm; a fresh gateway "
                   "worker attaches meanwhile)", steps=steps)


class Steps:
    """What /healthz says every 0.1 s: when the gateway attached, when an agent was ready."""

    def __init__(self, url: str) -> None:
        self.url, self.stop, self.seen = url, asyncio.Event(), {}

    async def run(self) -> None:
        while not self.stop.is_set():
            health = await get_json(self.url + "/healthz")
            now = time.monotonic()
            if health.get("cluster") == "attached":
                self.seen.setdefault("gateway_attached", now)
            if health.get("agents_ready", 0) >= 1:
                self.seen.setdefault("agents_ready", now)
            await asyncio.sleep(0.1)

    def since(self, t: float) -> dict[str, float]:
        return {k: round(v - t, 1) for k, v in self.seen.items()}


async def agent_startup(url: str, since: float) -> dict[str, Any]:
    """The agent's own account of its start (``info()['startup']``), seconds from ``since``."""
    agents = (await get_json(url + "/cluster")).get("agents") or []
    info = next((a["info"] for a in agents if a.get("status") == "online"), {})
    startup = dict(info.get("startup") or {})
    if "process_started" in startup:
        # the agent's clock is time.time(); ``since`` is this process's monotonic clock
        startup["process_started"] = round(
            startup["process_started"] - (time.time() - (time.monotonic() - since)), 1)
    return startup


async def no_cluster_fallback_off(args) -> dict[str, Any]:
    nowhere = Head(TOKEN, prefix="kgf", copy_kiln=True)
    try:
        gateway = Gateway(nowhere, "--address", f"127.0.0.1:{free_port()}", "--fallback", "off")
        try:
            await wait_until(lambda: _is(get_json(gateway.url + "/healthz"), "cluster",
                                         "detached"), 300)
            load = Load(gateway.url, args.clients)
            rss, start = gateway.rss_mb(), time.monotonic()
            await load.start()
            await asyncio.sleep(args.fault)
            await load.stop()
            return summary("no_cluster_fallback_off", load.since(start), None, gateway, rss,
                           "expected: every request fails with 503 saying why")
        finally:
            gateway.stop()
    finally:
        nowhere.remove()


ON_HEAD = {"agent_kill": agent_kill, "slow_clients": slow_clients, "bad_input": bad_input,
           "head_restart": head_restart}


async def _is(got, key: str, want: Any) -> bool:
    value = (await got).get(key)
    return value >= want if isinstance(want, int) and isinstance(value, int) else value == want


async def _agent_answered(load: Load, after: float) -> bool:
    return any(sent >= after and s == 200 and not fb for _, s, fb, sent in load.results)


async def _bad_input(url: str, seconds: float) -> dict[str, int]:
    """Bad requests for ``seconds``; counts of the statuses they got."""
    seen: dict[str, int] = {}
    host, port = url.removeprefix("http://").split(":")
    end = time.monotonic() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        while time.monotonic() < end:
            cases = [
                s.post(url + "/infer", data=b'{"texts": ["bad \\ud800"]}',
                       headers={"content-type": "application/json"}),
                s.post(url + "/infer", data=_chunks(), headers={"content-type": "application/json"}),
                s.post(url + "/infer?strategy=fastest", json={"texts": ["x"]}),
            ]
            for case in cases:
                try:
                    async with case as r:
                        seen[str(r.status)] = seen.get(str(r.status), 0) + 1
                except aiohttp.ClientError as err:
                    seen[type(err).__name__] = seen.get(type(err).__name__, 0) + 1
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"texts\":")
            answer = await reader.read(12)
            seen[answer.decode(errors="replace")[9:12] or "closed"] = seen.get(
                answer.decode(errors="replace")[9:12] or "closed", 0) + 1
            writer.close()
    return seen


async def _chunks():
    yield b'{"texts": ["'
    for _ in range(1024):
        yield b"x" * 10_000
    yield b'"]}'


def _faults(text: str) -> list[str]:
    chosen = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in chosen if f not in FAULTS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown fault(s) {', '.join(unknown) or '(none)'}; "
                                         f"choose from {', '.join(FAULTS)}")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds of plain load between faults")
    parser.add_argument("--fault", type=float, default=10.0, help="seconds a fault lasts")
    parser.add_argument("--head-down", type=float, default=10.0)
    parser.add_argument("--preload", default="embed", help="`kiln up --preload` (README's "
                        "production setting; '' for none)")
    parser.add_argument("--preload-timeout", type=float, default=None,
                        help="`kiln up --preload-timeout` (0: `kiln up` returns before its agents "
                        "are warm, as before it waited for them)")
    parser.add_argument("--recover", type=float, default=60.0, help="longest wait for recovery")
    parser.add_argument("--faults", default=",".join(FAULTS), type=_faults,
                        help=f"comma-separated, any of (run in this order): {', '.join(FAULTS)}")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                             "gateway-faults-vm.json"))
    args = parser.parse_args()
    out = asyncio.run(run(args))
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Faults as on real networks, repeated: rounds per fault kind, items lost, duplicates, seconds.

Needs root (network namespaces): the hosts and the cluster of tests/netns.py (h1 head, h2 and h3
workers, h4 driver and gateway; the README's `kiln up` / `kiln join` as written). Per round: a
worker host's cable is pulled mid-`kiln.sample`, mid-`kiln.map` and under gateway load, an
agent is SIGKILLed mid-map, and the head crashes and comes back. After each round the failed
host returns (cable in, `kiln join` again) and must serve.

    sudo .venv/bin/python bench/chaos.py [--rounds 10] [--head-rounds 10] [--only KIND ...]
    ... --only gateway head --rounds 5 --from-log first-run.log   # add to a run's rounds

The results file is written after every round, so a run cut short keeps what it measured;
``--from-log`` takes the rounds printed by an earlier run (its JSON lines) as a start. A round
whose harness failed (the driver did not answer a query in time on a loaded machine) is
recorded as such, the driver is started again, and the run goes on.

Prints, per fault: rounds, items asked, items lost (must be 0), duplicates (0), typed failures,
and the seconds until Ray declared the node dead (detect), until the work in flight was done
(recover), what the fault added to the call over the same call without one (extra), and until
the returned host answered again (back), as median and max; writes
bench/results/chaos-vm.json. What bounds detection: `kiln up` sets Ray's health checks on the
head (every 1 s, 1.5 s timeout, dead after 3 failures: at most 1 + 3 x 2.5 = 8.5 s).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import netns  # noqa: E402  (the fault rounds, run as tests/test_netns_faults.py runs them)
from netns import Driver, Hosts, NetnsCluster, unavailable  # noqa: E402

KINDS = ("sample", "map", "agent", "gateway", "head")


def _stat(values: list[float | None]) -> dict:
    got = [v for v in values if v is not None]
    return {"median": round(statistics.median(got), 2) if got else None,
            "max": round(max(got), 2) if got else None, "missing": len(values) - len(got)}


def summarize(rounds: list[dict]) -> dict:
    return {
        "rounds": len(rounds), "items": sum(r["items"] for r in rounds),
        "lost": sum(r["lost"] for r in rounds), "duplicates": sum(r["duplicates"] for r in rounds),
        "failed_typed": sum(r["failed_typed"] for r in rounds),
        "detect_s": _stat([r["detect_s"] for r in rounds]),
        "recover_s": _stat([r["recover_s"] for r in rounds]),
        "back_s": _stat([r["back_s"] for r in rounds]),
        "extra_s": _stat([r.get("extra_s") for r in rounds]),
    }


def print_table(summary: dict[str, dict]) -> None:
    print(f"\n{'fault':30} {'rounds':>6} {'items':>6} {'lost':>5} {'dup':>4} {'typed':>6} "
          f"{'detect s med/max':>17} {'recover s med/max':>18} {'extra s med/max':>16} "
          f"{'back s med/max':>15}")

    def mm(s: dict) -> str:
        return "-" if s["median"] is None else f"{s['median']:.1f}/{s['max']:.1f}"

    for fault, s in summary.items():
        print(f"{fault:30} {s['rounds']:6d} {s['items']:6d} {s['lost']:5d} {s['duplicates']:4d} "
              f"{s['failed_typed']:6d} {mm(s['detect_s']):>17} {mm(s['recover_s']):>18} "
              f"{mm(s.get('extra_s', {'median': None})):>16} {mm(s['back_s']):>15}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--head-rounds", type=int, default=10)
    ap.add_argument("--only", nargs="*", choices=KINDS, default=list(KINDS))
    ap.add_argument("--from-log", help="an earlier run's output: its rounds are kept")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "chaos-vm.json"))
    args = ap.parse_args()
    why = unavailable()
    if why:
        sys.exit(f"chaos needs network namespaces: {why}")
    results: dict[str, list[dict]] = read_log(args.from_log) if args.from_log else {}
    harness: list[dict] = []
    started = time.time()

    def write() -> dict[str, dict]:
        summary = {fault: summarize(rs) for fault, rs in results.items()}
        out = {"machine": f"{platform.node()} ({platform.machine()}, 2 cores shared)",
               "wall_s": round(time.time() - started), "bound": "Ray health checks set by kiln "
               "up: period 1 s, timeout 1.5 s, 3 failures -> at most 8.5 s to declare a node dead",
               "summary": summary, "harness_failures": harness, "rounds": results}
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
        return summary

    with Hosts() as hosts:
        cluster = NetnsCluster(hosts).start()
        driver = Driver(hosts, cluster)

        def record(fault: str, run) -> None:
            nonlocal driver
            try:
                r = run()
            except AssertionError as err:  # the harness, not kiln: the driver did not answer
                harness.append({"fault": fault, "error": str(err)[:300]})
                print(json.dumps(harness[-1]), flush=True)
                driver.close()
                driver = Driver(hosts, cluster)
                return
            if isinstance(r, tuple):
                r, driver = r
            results.setdefault(r.fault, []).append(r.as_dict())
            print(json.dumps(r.as_dict()), flush=True)
            write()

        for i in range(args.rounds):
            if "sample" in args.only:
                record("sample", lambda i=i: netns.link_down_mid_sample(hosts, cluster, driver, seed=i))
            if "map" in args.only:
                record("map", lambda: netns.link_down_mid_map(hosts, cluster, driver))
            if "agent" in args.only:
                record("agent", lambda: netns.agent_killed_mid_map(hosts, cluster, driver))
        if "gateway" in args.only:
            gw, url, key = netns.start_gateway(hosts, cluster)
            for _ in range(args.rounds):
                record("gateway", lambda: netns.link_down_mid_gateway_load(hosts, cluster,
                                                                           driver, url, key))
            gw.kill()
        if "head" in args.only:
            for _ in range(args.head_rounds):
                record("head", lambda: netns.head_restart(hosts, cluster, driver))
        driver.close()
    print_table(write())
    print(f"\nwrote {args.out}")


def read_log(path: str) -> dict[str, list[dict]]:
    """The rounds an earlier run printed (one JSON object per line)."""
    rounds: dict[str, list[dict]] = {}
    for line in Path(path).read_text().splitlines():
        if line.startswith("{") and '"fault"' in line and '"items"' in line:
            r = json.loads(line)
            rounds.setdefault(r["fault"], []).append(r)
    return rounds


if __name__ == "__main__":
    main()

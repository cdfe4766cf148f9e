"""The README's cluster commands on real hosts: each host a network namespace with its own address.

h1 10.77.0.1 runs `kiln up --host 10.77.0.1 --name head1`, h2 and h3 `kiln join 10.77.0.1:6379
--name gpu2|gpu3`, h4 10.77.0.4 is the driver and the gateway (tests/netns.py, bench/netns.sh).
Every command and driver runs on its host, in its own process, with that host's HOME and Ray
temp dir; the token travels only as the README says (RAY_AUTH_MODE / RAY_AUTH_TOKEN).
"""

from __future__ import annotations

import json
import math
import time

import pytest
from netns import KILN, address, show

from kiln.bayes._examples import seed_001_posterior_means

pytestmark = [pytest.mark.slow, pytest.mark.multinode, pytest.mark.timeout(900)]

HEAD = address("h1")
LOOPBACK = "127.0.0.1"
# Ray 2.60's C++ servers bind every interface whenever the node's address is not loopback; no
# option binds them to one address (docs/cluster.md). Everything else must be on the host's own
# address or on loopback.
EVERY_INTERFACE_OK = ("gcs_server", "raylet", "ray::", "python")
# Processes that may listen on every interface, with the port when it is fixed: the GCS, the
# raylet (node manager, object manager), workers' and agents' gRPC servers (ray::...), and Ray's
# dashboard process's own Prometheus metrics on 44227, which Ray 2.60 cannot bind nor turn off.
DASHBOARD_METRICS = 44227
# Ray's Prometheus exporters that kiln turns off (--no-monitor, RAY_enable_metrics_collection=0).
AUTOSCALER_METRICS = 44217


def _where(sockets) -> str:
    return "\n".join(map(str, sockets))


# Shipped to the nodes in driver scripts: the address this host reaches the head from.
IP_OF_THIS_HOST = """
import socket
def _ip_of_this_host():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("10.77.0.1", 9))
    try:
        return s.getsockname()[0]
    finally:
        s.close()
"""


def test_up_with_the_default_host_listens_on_loopback_only_and_down_stops_only_it(netns_cluster):
    hosts = netns_cluster.hosts
    r = hosts.kiln("h4", "up", "--name", "solo")  # the default --host 127.0.0.1
    try:
        assert r.returncode == 0, show(r)
        sockets = hosts.listening("h4")
        assert {s.address for s in sockets} == {LOOPBACK}, _where(sockets)
        assert {6379, 10001} <= {s.port for s in sockets}
    finally:
        down = hosts.kiln("h4", "down", timeout=120)
    assert down.returncode == 0, show(down)
    assert "stopped kiln node(s) solo" in " ".join(down.stdout.split())
    assert hosts.listening("h4") == []
    # `kiln down` on h4 stops h4's node only: the other hosts are other machines.
    for host in ("h1", "h2", "h3"):
        assert hosts.processes(host, "raylet"), host


def test_a_driver_on_a_host_that_did_not_join_is_told_to_join(netns_cluster):
    # Ray runs drivers only on its own nodes: on another machine `ray.init` aborts the process
    # (a C++ check on the head's raylet socket, which only exists on the head).
    started = time.monotonic()
    r = netns_cluster.hosts.kiln("h4", "status", "--address", netns_cluster.address, timeout=120)
    assert r.returncode == 1, show(r)
    assert f"kiln join {netns_cluster.address} --name" in " ".join(r.stderr.split()), show(r)
    assert time.monotonic() - started < 20  # Ray alone waits a minute for a node here


def test_the_readme_commands_make_named_nodes_at_their_own_addresses(netns_cluster):
    hosts = netns_cluster.hosts
    netns_cluster.join_driver_host()
    assert f"kiln join {HEAD}:6379 --name gpu2" in " ".join(netns_cluster.outputs["up"].stdout.split())
    r = hosts.kiln("h4", "status", "--json", "--address", netns_cluster.address)
    assert r.returncode == 0, show(r)
    nodes = {n["name"]: n for n in json.loads(r.stdout)}
    assert {name: n["address"] for name, n in nodes.items()} == {
        "head1": HEAD, "gpu2": address("h2"), "gpu3": address("h3"), "drv4": address("h4")}
    for node in nodes.values():
        assert node["state"] == "ready", node
    table = hosts.kiln("h4", "status", "--address", netns_cluster.address)
    assert table.returncode == 0, show(table)
    for name in nodes:
        assert name in table.stdout


def test_doctor_from_the_driver_host_passes_every_check_on_every_node(netns_cluster):
    netns_cluster.join_driver_host()
    r = netns_cluster.hosts.kiln("h4", "doctor", "--json", "--address", netns_cluster.address)
    assert r.returncode == 0, show(r)
    report = json.loads(r.stdout)
    assert report["ok"] is True
    assert sorted(n["name"] for n in report["nodes"]) == ["drv4", "gpu2", "gpu3", "head1"]


def test_nothing_listens_on_an_address_it_should_not(netns_cluster):
    hosts = netns_cluster.hosts
    netns_cluster.join_driver_host()
    for host in ("h1", "h2", "h3", "h4"):
        sockets = hosts.listening(host)
        assert sockets, host
        for s in sockets:
            # Another host's address cannot even be bound here; these are the only ones there are.
            assert s.address in (address(host), LOOPBACK) or s.everywhere, (host, str(s))
            if s.everywhere:
                assert s.process.startswith(EVERY_INTERFACE_OK), (host, str(s), _where(sockets))
        ports = {s.port for s in sockets}
        assert AUTOSCALER_METRICS not in ports, _where(sockets)
        # Prometheus exporters on every interface: at most the dashboard's, on the head.
        python_everywhere = {s.port for s in sockets if s.everywhere and s.process == "python"}
        assert python_everywhere <= ({DASHBOARD_METRICS} if host == "h1" else set()), _where(sockets)
    head = {s.port: s for s in hosts.listening("h1")}
    assert head[6379].process == "gcs_server"
    client = [s for s in hosts.listening("h1") if s.port == 10001]
    assert {s.address for s in client} == {HEAD, LOOPBACK}  # Ray's client server: host + loopback


def test_sample_embed_call_and_map_from_the_driver_host(netns_cluster):
    out = netns_cluster.driver(f"""
from kiln.bayes._examples import seed_001
kiln.connect(ADDRESS)
COMPUTE = ["head1", "gpu2", "gpu3"]
{IP_OF_THIS_HOST}
post = kiln.sample(seed_001(), chains=4, warmup=500, draws=1000, on=COMPUTE, seed=1,
                   progress=False)
s = post.summary(round_to="none")
out["sample"] = {{v: {{"mean": float(s.loc[v, "mean"]), "sd": float(s.loc[v, "sd"]),
                       "ess": float(s.loc[v, "ess_bulk"]), "r_hat": float(s.loc[v, "r_hat"])}}
                  for v in ("mu", "sigma")}}
out["sample_nodes"] = sorted({{str(p.get("node")) for p in post.placement}})
out["sample_n"] = int(post["mu"].size)
vecs = kiln.embed(["a cluster of GPUs", "one API"])
out["embed_shape"] = list(vecs.shape)
out["call"] = {{n: kiln.call(n, _ip_of_this_host) for n in ("head1", "gpu2", "gpu3")}}
def tag(i):
    return (i, i * i, _ip_of_this_host())
out["map"] = kiln.map(tag, range(12), nodes=COMPUTE, chunksize=1)
kiln.shutdown()
""", timeout=400)
    exact = seed_001_posterior_means()
    assert out["sample_n"] == 4000
    assert out["sample_nodes"] == ["gpu2", "gpu3", "head1"]  # chains spread over every node
    for var in ("mu", "sigma"):
        s = out["sample"][var]
        assert s["r_hat"] < 1.01
        assert abs(s["mean"] - exact[var]) < 4 * s["sd"] / math.sqrt(s["ess"]), (var, s)
    assert out["embed_shape"] == [2, 384]
    assert out["call"] == {"head1": HEAD, "gpu2": address("h2"), "gpu3": address("h3")}
    assert [(i, sq) for i, sq, _ in out["map"]] == [(i, i * i) for i in range(12)]
    assert {ip for *_, ip in out["map"]} == {HEAD, address("h2"), address("h3")}


@pytest.mark.parametrize("token", ["none", "wrong"])
def test_a_driver_without_the_right_token_is_refused_at_once_with_the_hint(netns_cluster, token):
    hosts = netns_cluster.hosts
    netns_cluster.join_driver_host()
    env = hosts.env("h4", token=False)
    if token == "wrong":
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64)
    started = time.monotonic()
    r = hosts.run("h4", KILN, "status", "--json", "--address", netns_cluster.address, env=env,
                  timeout=120)
    took = time.monotonic() - started
    assert r.returncode == 1, show(r)
    message = " ".join(r.stderr.split())
    assert "RAY_AUTH_MODE=token" in message and "RAY_AUTH_TOKEN" in message, show(r)
    assert "gcs_client" not in r.stderr, show(r)  # none of Ray's retry warnings
    assert r.stdout.strip() == ""
    assert took < 15, took  # Ray alone retries ~20 s


def test_kiln_connect_without_the_token_raises_connect_error_with_the_hint(netns_cluster):
    netns_cluster.join_driver_host()
    r = netns_cluster.hosts.python("h4", f"""
import kiln
from kiln.errors import ConnectError
try:
    kiln.connect({netns_cluster.address!r})
except ConnectError as err:
    print("REFUSED", " ".join(str(err).split()))
""", token=False, timeout=120)
    assert r.returncode == 0, show(r)
    assert "REFUSED" in r.stdout, show(r)
    assert "RAY_AUTH_TOKEN" in r.stdout


def test_the_gateway_on_the_driver_host_serves_every_host(netns_cluster):
    hosts = netns_cluster.hosts
    netns_cluster.join_driver_host()
    key = hosts.root / "h4" / "api-key"
    key.write_text("k" * 32)
    gw = hosts.popen("h4", KILN, "serve", "--host", address("h4"), "--port", 8000,
                     "--api-key-file", key, "--address", netns_cluster.address, log="serve.log")
    url = f"http://{address('h4')}:8000"
    auth = {"Authorization": "Bearer " + "k" * 32}
    try:
        wait = hosts.python("h4", f"""
import time, httpx
deadline = time.time() + 240
while True:
    try:
        if httpx.get("{url}/cluster", headers={auth!r}, timeout=5).status_code == 200:
            break
    except httpx.HTTPError:
        pass
    assert time.time() < deadline, "gateway did not come up"
    time.sleep(1)
""", timeout=300)
        assert wait.returncode == 0, show(wait) + (hosts.root / "h4" / "serve.log").read_text()[-3000:]
        # From another host: the gateway is at its host's address, for everyone on the network.
        r = hosts.python("h2", f"""
import json, httpx
r = httpx.post("{url}/v1/embeddings", json={{"input": ["one", "two", "three"]}},
               headers={auth!r}, timeout=120)
c = httpx.get("{url}/cluster", headers={auth!r}, timeout=30)
print(json.dumps({{"status": r.status_code, "n": len(r.json()["data"]),
                  "dim": len(r.json()["data"][0]["embedding"]), "cluster": c.json()}}))
""", timeout=180)
        assert r.returncode == 0, show(r)
        got = json.loads(r.stdout.strip().splitlines()[-1])
        assert (got["status"], got["n"], got["dim"]) == (200, 3, 384)
        assert {"head1", "gpu2", "gpu3"} <= set(json.dumps(got["cluster"]).replace('"', " ").split())
        gw_sockets = [s for s in hosts.listening("h4") if s.port == 8000]
        assert [s.address for s in gw_sockets] == [address("h4")], _where(hosts.listening("h4"))
    finally:
        gw.kill()
        gw.wait(timeout=30)

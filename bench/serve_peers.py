"""The servers a user would pick instead of ``kiln serve``, driven by ``bench/loadgen.py``.

- ``fastapi``: FastAPI + sentence-transformers written the obvious way: one ``model.encode``
  per request in a plain ``def`` endpoint (FastAPI runs it in its thread pool), one uvicorn
  process, ``{"embeddings": array.tolist()}``.
- ``rayserve``: Ray Serve with a batched deployment, one replica on the device: requests
  (each a list of texts) are gathered by ``@serve.batch``, their texts encoded in one
  ``model.encode`` at the raw encoder's best batch size, and each answer written with orjson.
  Given its best: ``max_batch_size`` x ``batch_wait_timeout_s`` swept at 64 one-text clients,
  with and without ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` (Ray's own fast-path switch), and the
  best measured.

Both take kiln's ``/infer`` body (``{"texts": [...]}``), so one load generator drives all three.
Each server runs in a process of its own (this script with ``--server``); its cold figure is
the time from starting that process to its first answer. Ray Serve is a benchmark-only
dependency: ``pip install -e '.[bench]'``.

    python bench/serve_peers.py --quick                 # small CPU run, JSON into bench/results
    python bench/serve_peers.py --model /models/minilm  # GPU node (bench/gpu.sh peers)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import loadgen
from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"


# --- sizes and cases shared with bench/embed.py ---------------------------------------------

@dataclass
class Sizes:
    """How long each HTTP measurement runs, and how many times."""

    duration_s: float = 4.0
    warmup_s: float = 1.0
    runs: int = 3
    procs: int = 1                   # client processes (more on a many-core GPU node)
    cases: tuple[tuple[int, int], ...] = ((1, 1), (64, 1), (256, 1), (64, 64))  # clients, texts
    sweep_s: float = 2.0
    batch_sizes: tuple[int, ...] = (32, 64, 128, 256)
    batch_waits: tuple[float, ...] = (0.001, 0.005, 0.02)
    rayserve_modes: tuple[str, ...] = ("optimized", "default")


# The 2-core box, shared, encodes some 25-50 texts/s: 64 clients x 64 texts would wait minutes a
# request (past kiln's 30 s deadline), and 4 x 64 (10 s) finished none inside a 5 s window; its
# many-text case is one client x 64 texts.
QUICK = dict(duration_s=5.0, warmup_s=3.0, runs=3, sweep_s=3.0, batch_sizes=(16, 64),
             cases=((1, 1), (64, 1), (256, 1), (1, 64)),
             batch_waits=(0.002, 0.01), rayserve_modes=("optimized",))


def case_name(clients: int, texts: int) -> str:
    return f"c{clients}/t{texts}"


def drive(url: str, sizes: Sizes, clients: int, texts: int, **kw: Any) -> dict[str, Any]:
    """``sizes.runs`` windows of ``clients`` x ``texts`` against ``url``: median, min-max."""
    load = loadgen.Load(url=url, clients=clients, texts=texts, duration_s=sizes.duration_s,
                        warmup_s=sizes.warmup_s, procs=sizes.procs, **kw)
    return loadgen.repeat(load, sizes.runs)


def drive_cases(url: str, sizes: Sizes, label: str) -> dict[str, Any]:
    out = {}
    for clients, texts in sizes.cases:
        name = case_name(clients, texts)
        out[name] = r = drive(url, sizes, clients, texts)
        print(f"  {label} {name}: {r['req_per_s']['median']} req/s "
              f"({r['req_per_s']['min']}-{r['req_per_s']['max']}), "
              f"p50 {r.get('p50_ms', {}).get('median')} ms, "
              f"p99 {r.get('p99_ms', {}).get('median')} ms, errors {r['errors']}", flush=True)
    return out


# --- a server in a process of its own --------------------------------------------------------

def post(url: str, texts: list[str], timeout: float = 30.0) -> int:
    req = urllib.request.Request(f"{url}/infer", data=json.dumps({"texts": texts}).encode(),
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, OSError):
        return 0


class Server:
    """``cmd`` started in a new session, ready once ``POST /infer`` answers 200; ``cold_s``:
    start to first answer; ``first_ms``: the next (fresh) text's latency."""

    def __init__(self, cmd: list[str], port: int, env: dict[str, str] | None = None,
                 ready_timeout: float = 600.0, name: str = "server") -> None:
        self.name, self.url = name, f"http://{HOST}:{port}"
        self.log = tempfile.NamedTemporaryFile("w+", prefix=f"bench-{name}-", suffix=".log",
                                               delete=False)
        t0 = time.perf_counter()
        src = os.environ.get("KILN_BENCH_SRC", str(REPO / "src"))
        pythonpath = os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": pythonpath, **(env or {})}, cwd=REPO,
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + ready_timeout
        while (status := post(self.url, ["warm"], timeout=60)) != 200:
            if (self.proc.poll() is not None or time.monotonic() > deadline
                    or status in (400, 405, 415, 422)):
                self.stop()
                raise RuntimeError(f"{name} did not start (last answer: {status}); its log ({self.log.name}) ends:\n"
                                   + self.tail())
            time.sleep(0.25)
        self.cold_s = round(time.perf_counter() - t0, 3)
        t = time.perf_counter()
        post(self.url, [f"a first fresh text for {name} {os.urandom(4).hex()}"])
        self.first_ms = round((time.perf_counter() - t) * 1000, 3)

    def tail(self, n: int = 4000) -> str:
        return Path(self.log.name).read_text(errors="replace")[-n:]

    def stop(self) -> None:
        """SIGINT, then SIGTERM, then SIGKILL to the session this server was started in."""
        for sig, wait in ((signal.SIGINT, 45), (signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        try:  # what the leader left behind in its session (Ray's workers, a proxy)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def device_tag() -> str:
    """h100 / h200 / ... for a GPU, vm for the CPU box (the name in results/*-<tag>.json)."""
    import torch

    if not torch.cuda.is_available():
        return "vm"
    name = torch.cuda.get_device_name(0).lower()
    for word in name.replace("nvidia", "").split():
        if word[:1].isalpha() and any(c.isdigit() for c in word):
            return word
    return "gpu"


def raw_sweep(model: Any, make: Any, n: int, batch_sizes: list[int], dtypes: list[str]
              ) -> tuple[dict[str, float], str, int]:
    """sentence-transformers' bulk texts/s on ``n`` fresh texts (``make(n)``) at each dtype
    ("auto": as loaded) and batch size; leaves ``model`` at the best: (sweep, dtype, batch)."""
    import torch

    loaded = next(model.parameters()).dtype
    sweep: dict[str, float] = {}
    for dtype in dtypes:
        model.to(loaded if dtype == "auto" else getattr(torch, dtype))
        model.encode(make(n), batch_size=max(batch_sizes))  # untimed: first pass at this dtype
        for b in batch_sizes:
            batch = make(n)
            t = time.perf_counter()
            model.encode(batch, batch_size=b)
            sweep[f"{dtype}/b{b}"] = round(n / (time.perf_counter() - t), 1)
            print(f"  raw {dtype} batch {b}: {sweep[f'{dtype}/b{b}']} texts/s", flush=True)
    best = max(sweep, key=sweep.get)
    dtype, b = best.split("/b")
    model.to(loaded if dtype == "auto" else getattr(torch, dtype))
    return sweep, dtype, int(b)


def machine() -> dict[str, Any]:
    import sentence_transformers
    import torch

    cuda = torch.cuda.is_available()
    return {"platform": platform.platform(), "cpus": os.cpu_count(),
            "device": "cuda" if cuda else "cpu",
            "gpu": torch.cuda.get_device_name(0) if cuda else None, "torch": torch.__version__,
            "sentence_transformers": sentence_transformers.__version__,
            "python": platform.python_version()}


# --- the servers (this script with --server) -------------------------------------------------

class Texts(BaseModel):
    texts: list[str]


def fastapi_server(model_path: str, device: str, port: int) -> None:
    import uvicorn
    from fastapi import FastAPI
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device=device, local_files_only=True)
    app = FastAPI()

    @app.post("/infer")
    def infer(body: Texts) -> dict:
        return {"embeddings": model.encode(body.texts).tolist()}

    uvicorn.run(app, host=HOST, port=port, log_level="warning")


def reflection_stand_in() -> bool:
    """Let ``ray.serve`` import where ``grpc_reflection`` cannot (missing, or built for a newer
    grpcio than the machine's, as on the GPU image): Ray Serve imports it up front for its
    gRPC proxy's reflection service, which this HTTP-only benchmark never starts. The stand-in
    goes on PYTHONPATH so that Ray's controller, proxy and replica find it too. True if used."""
    try:
        from grpc_reflection.v1alpha import reflection  # noqa: F401
        return False
    except Exception:  # ImportError, or RuntimeError from a grpcio version check
        pass
    root = Path(tempfile.mkdtemp(prefix="grpc-reflection-stand-in-"))
    pkg = root / "grpc_reflection" / "v1alpha"
    pkg.mkdir(parents=True)
    (root / "grpc_reflection" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "reflection.py").write_text(
        'SERVICE_NAME = "grpc.reflection.v1alpha.ServerReflection"\n\n\n'
        "def enable_server_reflection(service_names, server, pool=None):\n"
        '    raise RuntimeError("gRPC reflection is not available (bench stand-in)")\n')
    for name in [m for m in sys.modules if m.startswith("grpc_reflection")]:
        del sys.modules[name]
    sys.path.insert(0, str(root))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root),
                                                             os.environ.get("PYTHONPATH")]))
    print("grpc_reflection: bench stand-in in use", flush=True)
    return True


def rayserve_server(model_path: str, device: str, port: int, batch_size: int, dtype: str
                    ) -> None:
    reflection_stand_in()
    import ray
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    @serve.deployment(max_ongoing_requests=512, ray_actor_options={
        "num_gpus": 1 if device.startswith("cuda") else 0,
        "num_cpus": 1 if device.startswith("cuda") else os.cpu_count()})
    class Embedder:
        def __init__(self) -> None:
            from sentence_transformers import SentenceTransformer

            self.model = SentenceTransformer(model_path, device=device, local_files_only=True)
            if dtype != "auto":
                import torch

                self.model.to(getattr(torch, dtype))

        @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
        async def encode(self, requests: list[list[str]]) -> list[bytes]:
            import orjson

            flat = [t for texts in requests for t in texts]
            rows = self.model.encode(flat, batch_size=batch_size)
            out, i = [], 0
            for texts in requests:
                out.append(orjson.dumps({"embeddings": rows[i:i + len(texts)]},
                                        option=orjson.OPT_SERIALIZE_NUMPY))
                i += len(texts)
            return out

        async def __call__(self, request: Request) -> Response:
            if request.url.path.endswith("/configure"):  # the sweep, without a redeploy
                q = request.query_params
                self.encode.set_max_batch_size(int(q["max_batch_size"]))
                self.encode.set_batch_wait_timeout_s(float(q["batch_wait_timeout_s"]))
                return Response(b"{}", media_type="application/json")
            texts = (await request.json())["texts"]
            return Response(await self.encode(texts), media_type="application/json")

    ray.init(include_dashboard=False, logging_level="WARNING")
    serve.start(http_options={"host": HOST, "port": port})
    serve.run(Embedder.bind(), name="embed", route_prefix="/")
    stop = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop:
        time.sleep(0.2)
    serve.shutdown()
    ray.shutdown()


def configure(url: str, max_batch_size: int, wait_s: float) -> None:
    q = f"max_batch_size={max_batch_size}&batch_wait_timeout_s={wait_s}"
    with urllib.request.urlopen(urllib.request.Request(f"{url}/configure?{q}", data=b""),
                                timeout=60) as r:
        r.read()


# --- the peers' benchmark ---------------------------------------------------------------------

def server_cmd(kind: str, model_path: str, device: str, port: int, batch_size: int = 256,
               dtype: str = "auto") -> list[str]:
    return [sys.executable, __file__, "--server", kind, "--model", model_path, "--device",
            device, "--port", str(port), "--batch-size", str(batch_size), "--dtype", dtype]


def rayserve_env(mode: str) -> dict[str, str]:
    return {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1" if mode == "optimized" else "0"}


def run_peers(model_path: str, device: str, sizes: Sizes, batch_size: int = 256,
              dtype: str = "auto", peers: tuple[str, ...] = ("fastapi", "rayserve")
              ) -> dict[str, Any]:
    """The peers (both by default), every case of ``sizes``; Ray Serve at its best from the
    sweep."""
    results: dict[str, Any] = {}
    if "fastapi" in peers:
        print("peer: FastAPI + sentence-transformers ...", flush=True)
        port = free_port()
        with Server(server_cmd("fastapi", model_path, device, port, batch_size), port,
                    name="fastapi") as s:
            results["fastapi"] = {"cold_s": s.cold_s, "first_ms": s.first_ms,
                                  **drive_cases(s.url, sizes, "fastapi")}
    if "rayserve" not in peers:
        return results

    print("peer: Ray Serve, batched: sweep at 64 one-text clients ...", flush=True)
    sweep: dict[str, Any] = {}
    best: tuple[float, str, int, float] | None = None
    served: dict[str, Any] = {}
    s: Server | None = None
    for mode in sizes.rayserve_modes:
        port = free_port()
        s = Server(server_cmd("rayserve", model_path, device, port, batch_size, dtype), port,
                   env=rayserve_env(mode), name=f"rayserve-{mode}")
        served[mode] = {"cold_s": s.cold_s, "first_ms": s.first_ms}
        try:
            for b in sizes.batch_sizes:
                for w in sizes.batch_waits:
                    configure(s.url, b, w)
                    load = loadgen.Load(url=s.url, clients=64, texts=1, duration_s=sizes.sweep_s,
                                        warmup_s=min(1.0, sizes.warmup_s), procs=sizes.procs)
                    r = loadgen.run(load)
                    key = f"{mode}/b{b}/w{w}"
                    sweep[key] = {k: r[k] for k in ("req_per_s", "p50_ms", "p99_ms", "errors")}
                    print(f"  {key}: {r['req_per_s']} req/s, p99 {r['p99_ms']} ms", flush=True)
                    if r["errors"] == 0 and (best is None or r["req_per_s"] > best[0]):
                        best = (r["req_per_s"], mode, b, w)
        except BaseException:
            s.stop()
            raise
        if mode != sizes.rayserve_modes[-1] or best is None or best[1] != mode:
            s.stop()  # the best is measured on a server of its mode, started again below
            s = None
    if best is None:
        raise RuntimeError("Ray Serve answered no sweep configuration without errors")
    _, mode, b, w = best
    print(f"peer: Ray Serve at its best ({mode}, max_batch_size {b}, wait {w} s) ...", flush=True)
    if s is None:
        port = free_port()
        s = Server(server_cmd("rayserve", model_path, device, port, batch_size, dtype), port,
                   env=rayserve_env(mode), name=f"rayserve-{mode}")
    try:
        configure(s.url, b, w)
        results["rayserve"] = {"mode": mode, "max_batch_size": b, "batch_wait_timeout_s": w,
                               "grpc_reflection_stand_in": "stand-in in use" in s.tail(10**6),
                               "encode_batch_size": batch_size, "dtype": dtype, **served[mode],
                               **drive_cases(s.url, sizes, "rayserve")}
    finally:
        s.stop()
    results["rayserve_sweep"] = sweep
    return results


def write(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a local sentence-transformers directory (default: kiln's "
                                   "'default' model)")
    p.add_argument("--quick", action="store_true", help="small sizes, for a 2-core CPU box")
    p.add_argument("--batch-size", type=int, help="model.encode's batch size in Ray Serve "
                   "(default: the best of a sweep here; bench/embed.py passes its own)")
    p.add_argument("--dtype", help="Ray Serve's model dtype: auto (as loaded), float32, ... "
                   "(default: the best of the sweep)")
    p.add_argument("--procs", type=int, default=1, help="load generator client processes")
    p.add_argument("--peers", default="fastapi,rayserve", help="which peers to run")
    p.add_argument("--sweep", help="Ray Serve's sweep, narrowed: MODES/SIZES/WAITS, e.g. "
                   "optimized/128,256/0.005,0.02 (default: every mode, size and wait)")
    p.add_argument("--out", help="JSON path (default bench/results/serve-peers-<device>.json)")
    p.add_argument("--server", choices=("fastapi", "rayserve"), help=argparse.SUPPRESS)
    p.add_argument("--device", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if args.server == "fastapi":
        fastapi_server(args.model, args.device, args.port)
        return
    if args.server == "rayserve":
        rayserve_server(args.model, args.device, args.port, args.batch_size, args.dtype)
        return
    import torch

    sys.path.insert(0, str(REPO / "src"))
    from kiln.embeddings._models import resolve

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model_path = str(Path(args.model).resolve()) if args.model else resolve("default").path
    sizes = Sizes(**(QUICK if args.quick else {}), procs=args.procs)
    if args.sweep:
        if args.sweep.count("/") != 2:
            p.error(f"--sweep {args.sweep!r}: MODES/SIZES/WAITS, e.g. optimized/128,256/0.005,0.02")
        modes, batch, waits = args.sweep.split("/")
        sizes.rayserve_modes = tuple(modes.split(","))
        sizes.batch_sizes = tuple(int(b) for b in batch.split(","))
        sizes.batch_waits = tuple(float(w) for w in waits.split(","))
    raw = {}
    if args.batch_size is None or args.dtype is None:
        from sentence_transformers import SentenceTransformer

        print("the raw encoder's best batch size and dtype, for Ray Serve ...", flush=True)
        model = SentenceTransformer(model_path, device=device, local_files_only=True)
        n = [0]

        def make(k: int) -> list[str]:
            n[0] += k
            return [loadgen.text("sweep", n[0] + i) for i in range(k)]

        gpu = device == "cuda"
        sweep, dtype, batch = raw_sweep(model, make, 20_000 if gpu else 256,
                                        [32, 128, 256, 512, 1024] if gpu else [32, 256],
                                        ["auto", "float32"] if gpu else ["auto"])
        raw = {"sweep": sweep, "best_dtype": dtype, "best_batch": batch}
        args.batch_size = args.batch_size or batch
        args.dtype = args.dtype or dtype
        del model
        if gpu:
            torch.cuda.empty_cache()
    results = run_peers(model_path, device, sizes, args.batch_size, args.dtype,
                        tuple(args.peers.split(",")))
    results["raw_sweep"] = raw
    write(Path(args.out or REPO / "bench" / "results" / f"serve-peers-{device_tag()}.json"),
          {"benchmark": "serve_peers", "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
           "machine": machine(), "model": model_path, "sizes": sizes.__dict__,
           "results": results})


if __name__ == "__main__":
    main()

"""``kiln serve``: a supervisor that holds the port, and worker processes that serve it.

Why two kinds of process: a Ray driver cannot outlive its cluster's head. With the head gone,
Ray exits the driver process after ``gcs_rpc_server_reconnect_timeout_s`` (the issue's "exits
~60 s after the GCS goes away"; the workers raise it to a week); when the head comes back as a
new cluster (no GCS fault tolerance), the driver aborts as soon as it reaches it
(``WrongClusterID``); and a driver whose local raylet died exits on its next call to it,
``ray.shutdown()`` included. So no process that has been a driver can re-attach.

The supervisor never imports Ray. It binds the listening socket once and starts ``workers``
processes that share it (uvicorn's model). A worker that loses its cluster (``_attach.py``)
keeps serving from its fallback and tells the supervisor, which starts a fresh worker; the
fresh one attaches when the head listens again, and once it serves, the old one is stopped
gracefully (it stops accepting, finishes what it has, exits). A worker that dies is replaced.
Connections that arrive meanwhile wait in the socket's backlog; none is refused.

``SupervisedServer`` starts this supervisor in a child process, for notebooks and tests.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

from kiln.errors import GatewayError, KilnError
from kiln.serve._attach import RECONNECT_TIMEOUT_ENV, RECONNECT_TIMEOUT_S
from kiln.serve._options import ServeOptions

log = logging.getLogger("kiln.serve")
FATAL_EXIT = 3          # a worker that cannot start as configured: the supervisor gives up
RESTART_BACKOFF_S = 1.0
DRAIN_S = 2.0           # a retiring worker closes connections after responses this long first
RETURN_DRAIN_S = 0.5    # ... and this long when a new head is up (its Ray driver may abort)


@dataclass
class _Worker:
    process: Any
    conn: Any
    detached: bool
    replaces: _Worker | None = None
    ready: bool = False
    replaced: bool = False       # a replacement was asked for
    retiring: bool = False
    started: float = 0.0


def serve(options: ServeOptions) -> None:
    """Bind, start the workers, keep them running until SIGINT/SIGTERM (see module docstring)."""
    options.check()
    os.environ.setdefault(RECONNECT_TIMEOUT_ENV, RECONNECT_TIMEOUT_S)
    import uvicorn

    config = uvicorn.Config("kiln.serve:create_app", host=options.host, port=options.port,
                            backlog=options.backlog, log_level=options.log_level)
    sock = config.bind_socket()
    # Listen now, not when a worker starts: connections wait in the backlog while a worker
    # starts or is replaced, instead of being refused.
    sock.listen(options.backlog)
    context = multiprocessing.get_context("spawn")
    workers: list[_Worker] = []
    stopping = threading.Event()
    fatal: list[str] = []

    def spawn(detached: bool, replaces: _Worker | None = None) -> _Worker:
        parent, child = context.Pipe()
        process = context.Process(target=worker_main, args=(options, sock, child, detached),
                                  name="kiln-gateway-worker", daemon=False)
        process.start()
        child.close()
        worker = _Worker(process, parent, detached, replaces, started=time.monotonic())
        workers.append(worker)
        return worker

    def stop(signum: int, frame: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for _ in range(options.workers):
        spawn(detached=False)
    where = f"{'https' if options.ssl_certfile else 'http'}://{options.host}:{options.port}"
    print(f"kiln gateway on {where} ({options.workers} worker(s), supervisor pid {os.getpid()})",
          file=sys.stderr, flush=True)
    try:
        while not stopping.is_set() and not fatal:
            _tend(workers, spawn, fatal, options)
            stopping.wait(0.2)
    finally:
        for w in workers:
            _signal(w.process, signal.SIGTERM)
        deadline = time.monotonic() + options.timeout_graceful_shutdown + 10
        for w in workers:
            w.process.join(max(0.1, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join(5)
        sock.close()
    if fatal:
        raise GatewayError(fatal[0])


def _tend(workers: list[_Worker], spawn: Any, fatal: list[str], options: ServeOptions) -> None:
    for w in list(workers):
        try:
            while w.conn.poll():
                message = w.conn.recv()
                if message[0] == "ready":
                    w.ready = True
                    if w.replaces is not None and not w.replaces.retiring:
                        # The fresh worker serves: the old one drains and stops.
                        w.replaces.retiring = True
                        try:
                            w.replaces.conn.send(("retire",))
                        except (OSError, ValueError):
                            _signal(w.replaces.process, signal.SIGTERM)
                elif message[0] == "lost" and not w.replaced:
                    w.replaced = True
                    print("kiln serve: a worker lost its cluster; starting a fresh one "
                          f"(pid {w.process.pid} serves from its fallback until then)",
                          file=sys.stderr, flush=True)
                    spawn(detached=True, replaces=w)
                elif message[0] == "fatal":
                    fatal.append(message[1])
        except (EOFError, OSError):
            pass
        if w.process.is_alive():
            continue
        workers.remove(w)
        if w.retiring or w.replaced or fatal:
            continue  # stopped on purpose, or its replacement is already on its way
        if w.process.exitcode == FATAL_EXIT:
            fatal.append(f"a gateway worker could not start (exit {FATAL_EXIT}); see above")
            continue
        print(f"kiln serve: worker pid {w.process.pid} exited ({w.process.exitcode}); "
              "starting another", file=sys.stderr, flush=True)
        time.sleep(RESTART_BACKOFF_S)
        spawn(detached=bool(options.address) or options.allow_no_cluster)


def _signal(process: Any, signum: int) -> None:
    try:
        os.kill(process.pid, signum)
    except (ProcessLookupError, TypeError):
        pass


def worker_main(options: ServeOptions, sock: Any, conn: Any, detached: bool) -> None:
    """One worker: attach (unless ``detached``), serve on the shared socket, report to the
    supervisor through ``conn``: ("ready",), ("lost",), ("fatal", message)."""
    os.environ.setdefault(RECONNECT_TIMEOUT_ENV, RECONNECT_TIMEOUT_S)
    import uvicorn

    import kiln
    from kiln.serve._app import create_app
    from kiln.serve._server import limit_logs, uvicorn_config

    def send(*message: Any) -> None:
        try:
            conn.send(message)
        except (OSError, ValueError):  # the supervisor is gone; serve on
            pass

    cluster = None
    if not detached:
        try:
            cluster = kiln.connect(options.address)
        except KilnError as err:
            if not options.allow_no_cluster:
                send("fatal", f"cannot attach to the cluster: {str(err).splitlines()[0]} "
                     "(start with --allow-no-cluster to serve from the fallback meanwhile)")
                sys.exit(FATAL_EXIT)
            log.warning("kiln serve: no cluster yet (%s); serving from the fallback and "
                        "attaching when it answers", str(err).splitlines()[0])
    server: Any = None

    def retire() -> None:
        # Lost, and a head listens again: stop accepting and finish what is in flight soon,
        # before this process's Ray driver reaches the new cluster (which aborts it). First a
        # short drain (every response says "Connection: close"), so that keep-alive clients
        # move to the fresh worker between requests: stopping at once cut 8 of 8 clients'
        # connections mid-request in bench/gateway_faults.py.
        if server is not None:
            app.state.draining = True
            threading.Timer(RETURN_DRAIN_S, setattr, (server, "should_exit", True)).start()

    try:
        app = create_app(cluster, address=options.address,
                         connect=kiln.connect if options.address else None,
                         on_lost=lambda: send("lost"), on_returned=retire,
                         **options.app_options())
    except KilnError as err:
        send("fatal", str(err))
        sys.exit(FATAL_EXIT)
    def leave_if_lost() -> None:
        if app.state.gateway.link.state == "lost":
            # Drained. Python's exit would wait for threads stuck in calls to the dead head,
            # and Ray's disconnect would reach a dead raylet and abort: just go.
            logging.shutdown()
            os._exit(0)

    app.state.after_stop.append(leave_if_lost)
    config = uvicorn_config(app, **options.server_options())
    limit_logs()
    server = uvicorn.Server(config)

    def announce() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started:
            send("ready")
        try:
            while conn.recv() != ("retire",):
                pass
        except (EOFError, OSError):
            return
        # Handed over to a fresh worker: first every response says "Connection: close", so
        # keep-alive clients reconnect (to the fresh worker) between requests instead of
        # having an idle connection closed under a request they are sending; then stop.
        app.state.draining = True
        time.sleep(DRAIN_S)
        server.should_exit = True

    threading.Thread(target=announce, name="kiln-announce", daemon=True).start()
    try:
        server.run(sockets=[sock])
        if not server.started and not server.should_exit:
            send("fatal", "the gateway failed to start (see the log above)")
            sys.exit(FATAL_EXIT)
    finally:
        try:
            kiln.shutdown()
        except Exception:  # leaving anyway
            log.debug("kiln serve: disconnecting from the cluster", exc_info=True)


class SupervisedServer:
    """``kiln serve`` in a child process: ``url``, ``stop()``, usable as a context.

    ``SupervisedServer(address="HEAD:6379", allow_no_cluster=True)`` takes ``ServeOptions``'
    fields (or ``options=``), checked here. The child is the supervisor, which imports no Ray:
    when the head restarts, a fresh worker attaches to the new cluster and the gateway serves
    from its agents again, where a ``BackgroundServer`` stays degraded on its fallback.
    Started when ``/healthz`` answers; stopped with the interpreter if not before.
    """

    def __init__(self, options: Any = None, start_timeout: float = 300.0, **fields: Any) -> None:
        from kiln.serve._server import free_port, wait_to_serve

        self.options = options if options is not None else ServeOptions(**fields)
        if not self.options.port:
            self.options.port = free_port(self.options.host)
        self.options.check()
        self.host, self.port = self.options.host, self.options.port
        self.process = multiprocessing.get_context("spawn").Process(
            target=serve, args=(self.options,), name="kiln-serve")
        self.process.start()
        atexit.register(self.stop)

        def serving() -> bool:
            if self._answers():
                return True
            if not self.process.is_alive():
                raise GatewayError(f"the gateway on {self.url} exited ({self.process.exitcode}) "
                                   "before it served (see the log above)")
            return False

        wait_to_serve(serving, start_timeout, f"the gateway on {self.url} to serve",
                      stop=self.stop, interval=0.2)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM to the supervisor: workers finish their requests, then everything exits."""
        if self.process.pid is None or self.process.exitcode is not None:
            return
        try:
            os.kill(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        self.process.join(self.options.timeout_graceful_shutdown + 15)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)

    def __enter__(self) -> SupervisedServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

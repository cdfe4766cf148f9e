"""The connection guard works the same over both of uvicorn's HTTP parsers: httptools (the
default where it is installed, as `uvicorn --http auto` picks it) and h11; `kiln serve --loop`
picks the event loop as uvicorn does (auto: uvloop where installed) and /cluster names it.
A real uvicorn server on loopback and raw sockets."""

from __future__ import annotations

import importlib.util
import socket
import time

import httpx
import pytest

from kiln.errors import GatewayError
from kiln.serve._app import create_app
from kiln.serve._server import BackgroundServer, Guard, guarded


def idle(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=15)


def closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_the_guard_makes_room_and_times_out_silent_connections_with_either_parser(http):
    app = create_app(None, fallback=False)
    with BackgroundServer(app, timeout_header=3.0, max_connections=4, http=http,
                          loop="asyncio") as s:
        assert httpx.get(s.url + "/cluster", timeout=10).json()["gateway"]["event_loop"] == "asyncio"
        socks = [idle(s.url) for _ in range(4)]
        time.sleep(0.2)  # the server has seen all four
        r = httpx.get(s.url + "/healthz", timeout=10)  # the fifth connection: over the cap
        assert r.status_code == 200 and r.json()["status"] == "degraded"
        assert closed_within(socks[0], 1.0)  # the oldest idle one made room, well before 3 s
        assert closed_within(socks[3], 6.0)  # and the others go at the header timeout
        for sock in socks:
            sock.close()


def test_auto_takes_uvloop_only_where_it_is_installed():
    expected = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    with BackgroundServer(create_app(None, fallback=False)) as s:
        assert httpx.get(s.url + "/cluster", timeout=10).json()["gateway"]["event_loop"] == expected


def test_auto_takes_httptools_and_a_parser_that_is_not_one_is_named():
    assert "HttpTools" in guarded(10.0, 0).__mro__[2].__name__
    assert issubclass(guarded(10.0, 0, "h11"), Guard)
    assert guarded(10.0, 0, "h11").__mro__[2].__name__ == "H11Protocol"
    with pytest.raises(GatewayError, match="--http 'h2'"):
        guarded(10.0, 0, "h2")

"""Everything ``kiln serve`` takes, checked in one place before anything starts.

A missing key file or a bad ``--strategy`` used to print a 60-90-line traceback after the
gateway had connected to the cluster; ``ServeOptions.check()`` raises ``GatewayError`` with one
line naming the option, and runs before Ray is touched.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kiln.errors import GatewayError

LOOPBACK_NAMES = ("localhost", "ip6-localhost")
HTTP_PARSERS = ("auto", "httptools", "h11")  # uvicorn's --http choices (kiln.serve._server)
EVENT_LOOPS = ("auto", "uvloop", "asyncio")  # uvicorn's --loop choices


def read_key(api_key: str | None, api_key_file: str | None) -> str | None:
    """The API key, from ``api_key`` or the first line of ``api_key_file``."""
    if api_key_file:
        path = Path(api_key_file).expanduser()
        try:
            api_key = path.read_text().strip()
        except OSError as err:
            raise GatewayError(f"--api-key-file {path}: cannot be read "
                               f"({err.strerror or err})") from None
        if not api_key:
            raise GatewayError(f"--api-key-file {path}: the file is empty; put the key in it")
    return api_key


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class ServeOptions:
    """``kiln serve``'s options (the CLI's names with ``_`` for ``-``); plain data, picklable."""

    host: str = "127.0.0.1"
    port: int = 8000
    address: str | None = None
    strategy: str = "round_robin"
    api_key_file: str | None = None
    allow_public_without_key: bool = False
    fallback: bool = True
    allow_no_cluster: bool = False
    timeout: float = 30.0                 # one deadline per request, across every attempt
    retries: int = 2
    refresh_s: float = 1.0
    models: list[str] | None = None
    max_texts: int = 2048
    max_chars: int = 100_000
    max_body_bytes: int = 8 * 2**20
    max_inflight: int = 256
    # the server (uvicorn's names, and kiln's guards)
    workers: int = 1
    timeout_keep_alive: float = 5.0
    timeout_header: float = 10.0
    timeout_body: float = 30.0
    timeout_graceful_shutdown: float = 30.0
    limit_concurrency: int | None = None
    limit_max_requests: int | None = None
    max_connections: int | None = None    # None: below the open-file limit
    backlog: int = 2048
    http: str = "auto"                    # uvicorn's parser: auto (httptools here), httptools, h11
    loop: str = "auto"                    # uvicorn's loop: auto (uvloop here), uvloop, asyncio
    h11_max_incomplete_event_size: int | None = None
    root_path: str = ""
    proxy_headers: bool = False
    forwarded_allow_ips: str | None = None
    ssl_keyfile: str | None = None
    ssl_certfile: str | None = None
    log_level: str = "info"
    access_log: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self) -> str | None:
        """Raise ``GatewayError`` (one line, naming the option) for what cannot work; returns
        the API key (read from its file)."""
        from kiln._routing import STRATEGIES

        if self.strategy not in STRATEGIES:
            raise GatewayError(f"--strategy {self.strategy!r}: unknown; use one of "
                               f"{', '.join(STRATEGIES)}")
        key = read_key(None, self.api_key_file)
        if not is_loopback(self.host) and key is None and not self.allow_public_without_key:
            raise GatewayError(
                f"--host {self.host} needs an API key: `openssl rand -hex 32 > key`, then "
                "--api-key-file key (or --allow-public-without-key)")
        for name in ("port",):
            value = getattr(self, name)
            if not 0 <= value <= 65535:
                raise GatewayError(f"--{name} {value}: must be 0..65535")
        positive = ("timeout", "refresh_s", "timeout_keep_alive", "timeout_header",
                    "timeout_body", "max_texts", "max_chars", "max_body_bytes", "max_inflight",
                    "workers", "backlog")
        for name in positive:
            if getattr(self, name) <= 0:
                raise GatewayError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be "
                                   "more than 0")
        if self.http not in HTTP_PARSERS:
            raise GatewayError(f"--http {self.http!r}: use one of {', '.join(HTTP_PARSERS)}")
        if self.http == "httptools" and importlib.util.find_spec("httptools") is None:
            raise GatewayError("--http httptools: httptools is not installed here "
                               "(pip install httptools, or --http auto)")
        if self.loop not in EVENT_LOOPS:
            raise GatewayError(f"--loop {self.loop!r}: use one of {', '.join(EVENT_LOOPS)}")
        if self.loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
            raise GatewayError("--loop uvloop: uvloop is not installed here "
                               "(pip install uvloop, or --loop auto)")
        if self.retries < 0:
            raise GatewayError(f"--retries {self.retries}: must be 0 or more")
        if self.workers > 1 and not self.address:
            raise GatewayError(f"--workers {self.workers}: each worker attaches to the cluster "
                               "on its own, so give the cluster's --address (`kiln up` prints "
                               "it); with no address each would start a local Ray of its own")
        for name in ("ssl_keyfile", "ssl_certfile"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                raise GatewayError(f"--{name.replace('_', '-')} {path}: no such file")
        if bool(self.ssl_keyfile) != bool(self.ssl_certfile):
            raise GatewayError("--ssl-keyfile and --ssl-certfile go together")
        if self.log_level not in ("critical", "error", "warning", "info", "debug", "trace"):
            raise GatewayError(f"--log-level {self.log_level!r}: use critical, error, warning, "
                               "info, debug or trace")
        return key

    def app_options(self) -> dict[str, Any]:
        """Keyword arguments of ``create_app``."""
        from kiln.serve._gateway import Limits

        return dict(strategy=self.strategy, api_key_file=self.api_key_file,
                    fallback=self.fallback, timeout=self.timeout, retries=self.retries,
                    refresh_s=self.refresh_s, models=self.models, body_timeout=self.timeout_body,
                    limits=Limits(max_texts=self.max_texts, max_chars=self.max_chars,
                                  max_body_bytes=self.max_body_bytes,
                                  max_inflight=self.max_inflight))

    def server_options(self) -> dict[str, Any]:
        """Keyword arguments of ``kiln.serve._server.uvicorn_config``."""
        out = dict(host=self.host, port=self.port, log_level=self.log_level,
                   timeout_header=self.timeout_header, max_connections=self.max_connections,
                   timeout_keep_alive=self.timeout_keep_alive,
                   timeout_graceful_shutdown=self.timeout_graceful_shutdown,
                   limit_concurrency=self.limit_concurrency,
                   limit_max_requests=self.limit_max_requests, backlog=self.backlog,
                   http=self.http, loop=self.loop,
                   h11_max_incomplete_event_size=self.h11_max_incomplete_event_size,
                   root_path=self.root_path, proxy_headers=self.proxy_headers,
                   forwarded_allow_ips=self.forwarded_allow_ips, ssl_keyfile=self.ssl_keyfile,
                   ssl_certfile=self.ssl_certfile, access_log=self.access_log)
        return {**out, **self.extra}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

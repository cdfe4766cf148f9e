"""Terminal tables for nodes and their start-up checks (``Cluster.status``, ``kiln doctor``)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

_STATE_STYLE = {"ready": "green", "refused": "red", "dead": "red", "lost": "red"}


def _gib(n: Any) -> str:
    return f"{n / 2**30:.0f} GiB" if isinstance(n, (int, float)) and n else ""


def nodes_table(nodes: list[Any]) -> Table:
    table = Table(title="kiln cluster", show_lines=False)
    for col in ("node", "address", "state", "agents", "GPUs", "kiln / jax / numpyro / torch", "reason"):
        table.add_column(col, overflow="fold")
    for n in nodes:
        fp = n.fingerprint or {}
        style = _STATE_STYLE.get(n.state, "yellow")
        gpus = ", ".join(f"{g['model']} {_gib(g.get('memory_bytes'))}".strip() for g in n.gpus) or "-"
        agents = ", ".join(f"{a.device}:{a.state}" for a in n.agents) or "-"
        versions = " / ".join(str(fp.get(k, "?")) for k in ("kiln", "jax", "numpyro", "torch")) if fp else ""
        # Names, reasons and versions are data, not markup: "[...]" in them must print as is.
        table.add_row(escape(n.name), escape(n.address), f"[{style}]{escape(n.state)}[/]",
                      escape(agents), escape(gpus), escape(versions), escape(n.reason))
    return table


def checks_table(nodes: list[Any]) -> Table:
    table = Table(title="kiln doctor: start-up checks per agent")
    for col in ("node", "agent", "named-node", "fingerprint", "device", "detail"):
        table.add_column(col, overflow="fold")
    for n in nodes:
        if not n.agents:
            table.add_row(escape(n.name), "-", "", "", "", escape(f"no agent ({n.state})"))
        for a in n.agents:
            results = {c["check"]: c["ok"] for c in a.info.get("checks", [])}
            marks = [_mark(results.get(k)) for k in ("named-node", "fingerprint", "device")]
            table.add_row(escape(n.name), escape(a.name), *marks, escape(a.reason))
    return table


def settings_table(rows: list[tuple[str, str, str, str]]) -> Table:
    """The KILN_* variables (kiln._settings.rows()): set here or not, default, what each does."""
    table = Table(title="kiln doctor: settings (KILN_* variables of this process)")
    for col in ("variable", "value here", "default", "what it does"):
        table.add_column(col, overflow="fold")
    for name, value, default, what in rows:
        table.add_row(escape(name), escape(value) if value else "[dim]unset[/]", escape(default),
                      escape(what))
    return table


def _mark(ok: str | None) -> str:
    return {"yes": "[green]ok[/]", "no": "[red]FAILED[/]"}.get(ok or "", "[dim]not run[/]")


def print_nodes(nodes: list[Any], console: Console | None = None) -> None:
    (console or Console()).print(nodes_table(nodes))

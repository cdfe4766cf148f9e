"""HTML for notebooks: the ``_repr_html_`` of Cluster, DispatchResult, Posterior and inspect.

Each helper takes plain attributes (duck-typed, read with ``getattr``) and returns an HTML
string, so the classes that own the data stay free of markup and these stay testable alone.
Everything shown is escaped: node names and reasons come from other machines.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

_STYLE = (
    "<style>"
    ".kiln table{border-collapse:collapse;font-size:12px;margin:4px 0}"
    ".kiln th,.kiln td{border:1px solid #ddd;padding:2px 8px;text-align:left}"
    ".kiln th{background:#f4f4f4}"
    ".kiln .ok{color:#1a7f37}.kiln .bad{color:#cf222e}.kiln .warn{color:#9a6700}"
    ".kiln .muted{color:#777}"
    "</style>"
)

_STATE_CLASS = {"ready": "ok", "refused": "bad", "lost": "bad", "dead": "bad", "starting": "warn"}


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], raw: bool = False) -> str:
    """An HTML table; cells are escaped unless ``raw`` (cells already HTML)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if raw else _e(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _wrap(title: str, *parts: str) -> str:
    return f'<div class="kiln">{_STYLE}<b>{_e(title)}</b>{"".join(parts)}</div>'


def _state(state: Any) -> str:
    text = str(getattr(state, "value", state))
    return f'<span class="{_STATE_CLASS.get(text.lower(), "muted")}">{_e(text)}</span>'


def _gpus(gpus: Any) -> str:
    if not gpus:
        return '<span class="muted">none (CPU)</span>'
    parts = []
    for g in gpus:
        if isinstance(g, Mapping):
            model = g.get("model") or g.get("name") or "GPU"
            mem = g.get("memory_gb") or g.get("memory")
            if mem is None and g.get("memory_bytes"):
                mem = round(g["memory_bytes"] / 2**30, 1)
            parts.append(f"{model}" + (f" ({mem} GB)" if mem is not None else ""))
        else:
            parts.append(str(g))
    return "<br>".join(_e(p) for p in parts)


def _agent_name(agent: Any) -> str:
    if isinstance(agent, str):
        return agent
    if isinstance(agent, Mapping):
        return str(agent.get("name", agent))
    return str(getattr(agent, "name", agent))


def _fingerprint_short(fp: Any) -> str:
    if not isinstance(fp, Mapping) or not fp:
        return ""
    keys = ("python", "kiln", "jax", "numpyro", "torch", "cuda_driver")
    return ", ".join(f"{k} {fp[k]}" for k in keys if fp.get(k))


def cluster_html(nodes: Iterable[Any], title: str = "kiln cluster") -> str:
    """Nodes with state, address, GPUs, agents and fingerprint; refused nodes show why."""
    nodes = list(nodes)
    rows = []
    for n in nodes:
        reason = getattr(n, "reason", None)
        agents = getattr(n, "agents", None) or []
        rows.append((
            f"<b>{_e(getattr(n, 'name', '?'))}</b>",
            _state(getattr(n, "state", "?")) + (f'<br><span class="bad">{_e(reason)}</span>'
                                                 if reason else ""),
            _e(getattr(n, "address", "") or ""),
            _gpus(getattr(n, "gpus", None)),
            "<br>".join(_e(_agent_name(a)) for a in agents) or '<span class="muted">none</span>',
            _e(_fingerprint_short(getattr(n, "fingerprint", None))),
        ))
    ready = sum(1 for n in nodes if str(getattr(getattr(n, "state", ""), "value",
                                                getattr(n, "state", ""))).lower() == "ready")
    summary = f'<div class="muted">{len(nodes)} node(s), {ready} ready</div>'
    return _wrap(title, summary, table(("node", "state", "address", "GPUs", "agents",
                                        "fingerprint"), rows, raw=True))


def _describe_array(values: Any) -> tuple:
    a = np.asarray(values, dtype=float).ravel()
    if a.size == 0:
        return (0, "", "", "", "")
    q5, q95 = np.quantile(a, [0.05, 0.95])
    return (a.size, f"{a.mean():.4g}", f"{a.std():.4g}", f"{q5:.4g}", f"{q95:.4g}")


def _kv_table(mapping: Mapping | None) -> str:
    if not mapping:
        return ""
    rows = [(k, f"{v:.4g}" if isinstance(v, float) else v) for k, v in mapping.items()]
    return table(("", ""), rows)


def dispatch_html(result: Any) -> str:
    """A DispatchResult: where it ran, per-variable summary, sampler stats, timing."""
    where = f"{getattr(result, 'node', '?')}/{getattr(result, 'device', '?')}"
    samples = getattr(result, "samples", None) or {}
    rows = [(name, *_describe_array(values)) for name, values in samples.items()]
    stats = getattr(result, "stats", None)
    timing = getattr(result, "timing", None)
    return _wrap(
        f"dispatch on {where}",
        table(("variable", "draws", "mean", "sd", "5%", "95%"), rows),
        "<div><i>sampler</i></div>" + _kv_table(_scalars(stats)) if stats else "",
        "<div><i>timing (s)</i></div>" + _kv_table(_scalars(timing)) if timing else "",
    )


def _scalars(mapping: Any) -> dict:
    """Scalar entries of a mapping; arrays are summarised by their mean."""
    out = {}
    for k, v in dict(mapping).items():
        if isinstance(v, (int, float, str, bool, np.generic)):
            out[k] = v.item() if isinstance(v, np.generic) else v
        else:
            try:
                a = np.asarray(v, dtype=float)
                out[f"{k} (mean)"] = float(a.mean()) if a.size else ""
            except (TypeError, ValueError):
                out[k] = str(v)
    return out


def posterior_html(summary_df: Any, *, title: str = "Posterior", chains: int | None = None,
                   draws: int | None = None, placement: Any = None,
                   warnings: Sequence[str] | None = None, rhat_limit: float = 1.01) -> str:
    """A Posterior: the summary table (R-hat above ``rhat_limit`` flagged), placement, warnings."""
    head = []
    if chains is not None:
        head.append(f"{chains} chain(s)")
    if draws is not None:
        head.append(f"{draws} draws each")
    parts = [f'<div class="muted">{_e(", ".join(head))}</div>' if head else ""]
    columns = [str(c) for c in summary_df.columns]
    rows = []
    for name, row in summary_df.iterrows():
        cells = [f"<b>{_e(name)}</b>"]
        for col, value in zip(columns, row.tolist(), strict=False):
            text = _e(f"{value:.4g}" if isinstance(value, float) else value)
            if col == "r_hat" and isinstance(value, float) and value > rhat_limit:
                text = f'<span class="bad">{text}</span>'
            cells.append(text)
        rows.append(cells)
    parts.append(table(["", *columns], rows, raw=True))
    if placement:
        prow = []
        for p in placement:
            p = p if isinstance(p, Mapping) else getattr(p, "__dict__", {"placement": p})
            prow.append(tuple(p.values()))
            header = tuple(p.keys())
        parts.append("<div><i>placement</i></div>" + table(header, prow))
    if warnings:
        parts.append("<div><i>warnings</i></div><ul>"
                     + "".join(f'<li class="warn">{_e(w)}</li>' for w in warnings) + "</ul>")
    return _wrap(title, *parts)


def node_html(report: Any) -> str:
    """``kiln.inspect(node)``: host, devices, models, agents and (folded) packages."""
    devices = [(d.get("framework", ""), d.get("platform", ""), d.get("id", ""),
                d.get("kind", "") or d.get("error", ""), d.get("memory_gb", ""))
               for d in report.devices]
    agents = [(a.get("name", ""), a.get("device", ""), ", ".join(a.get("capabilities", [])))
              for a in report.agents]
    packages = table(("package", "version"), sorted(report.packages.items()))
    fp = table(("key", "value"), sorted((k, v) for k, v in report.fingerprint.items()))
    return _wrap(
        f"node {report.node}",
        f'<div>{_state(report.state)} · {_e(report.hostname)} · {_e(report.address)} · '
        f'Python {_e(report.python)}</div>',
        "<div><i>devices</i></div>" + table(("framework", "platform", "id", "kind", "GB"), devices),
        "<div><i>agents</i></div>" + table(("agent", "device", "capabilities"), agents),
        "<div><i>loaded models</i></div>"
        + (table(("model",), [(m,) for m in report.models]) if report.models
           else '<div class="muted">none</div>'),
        f"<details><summary>fingerprint</summary>{fp}</details>",
        f"<details><summary>{len(report.packages)} packages</summary>{packages}</details>",
    )


def object_html(report: Any) -> str:
    """``kiln.inspect(node, name)``: the object's signature and doc, and its members."""
    rows = [(m["name"], m["kind"], m.get("signature") or "", m.get("doc") or "")
            for m in report.members]
    return _wrap(
        f"{report.kind} {report.name} on node {report.node}",
        f"<div><code>{_e(report.name)}{_e(report.signature or '')}</code></div>",
        f'<div class="muted">{_e(report.doc)}</div>' if report.doc else "",
        table(("name", "kind", "signature", "doc"), rows) if rows else "",
    )


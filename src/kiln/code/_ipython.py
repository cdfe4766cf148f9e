"""``%load_ext kiln``: tab completion answered by the cluster (seed 003's remote introspection).

Three completions, added as one IPython matcher (Matcher API v2):

- node names inside kiln calls: ``kiln.call("g<TAB>``, ``kiln.sample(m, on="g<TAB>``;
- dotted names as a node sees them: ``kiln.inspect("gpu1", "numpyro.in<TAB>``;
- attributes of ``kiln.remote_module`` proxies: ``m = kiln.remote_module("gpu1", "pkg")``,
  ``m.<TAB>`` lists what ``pkg`` has *on gpu1*.

Remote answers are cached for a few seconds so that typing does not send a call per key.
A completion that fails (no cluster, node gone) offers nothing rather than an error.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from kiln._caching import Cache
from kiln.code._introspect import RemoteModule

log = logging.getLogger("kiln")

_CACHE_S = 5.0

# kiln functions whose first positional argument is a node name, and those taking on=/node=/nodes=
_NODE_FIRST = {"call", "inspect", "remote_module", "dispatch"}
_KILN_FUNCS = _NODE_FIRST | {"sample", "map", "embed", "remote"}
_NODE_KEYWORD = re.compile(r"\b(?:on|node|nodes)\s*=\s*(?:\[\s*(?:([\"'])[^\"']*\1\s*,\s*)*)?$")
_AFTER_NODE = re.compile(r"^\s*([\"'])(?P<node>[^\"']+)\1\s*,\s*$")
_ATTRIBUTE = re.compile(r"(?P<expr>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\.(?P<attr>\w*)$")
_CALLEE = re.compile(r"(?P<callee>[A-Za-z_][\w.]*)\s*$")

# a few seconds, so that typing does not send a call per key; a few hundred names and nodes
_cache: Cache[tuple[str, ...], list[str]] = Cache(256, ttl=_CACHE_S)


def _cached(key: tuple[str, ...], compute: Callable[[], list[str]]) -> list[str]:
    found = _cache.get(key)
    if found is not None:
        return found
    try:
        value = compute()
    except Exception as err:  # noqa: BLE001 - completion must never raise into the editor;
        # no cluster or a node gone offers nothing (and is not asked again for a few seconds)
        log.debug("completion %s: %r", key, err)
        value = []
    _cache.put(key, value)
    return value


def clear_cache() -> None:
    _cache.clear()


def node_names() -> list[str]:
    """Names of the connected cluster's nodes (empty when not connected)."""
    def compute() -> list[str]:
        from kiln import cluster

        return [n.name for n in cluster.current().nodes()]

    return _cached(("nodes",), compute)


def remote_names(node: str, dotted: str) -> list[str]:
    """Full dotted names one level below ``dotted`` on ``node`` (top-level modules for "")."""
    def compute() -> list[str]:
        from kiln import cluster
        from kiln.code._call import agents_for
        from kiln.code._introspect import inspect

        if not dotted:
            h = agents_for(cluster.current(), node)[0]
            return h.invoke("code", "modules", {})["modules"]
        return [f"{dotted}.{name}" for name in inspect(node, dotted).names()]

    return _cached(("names", node, dotted), compute)


def complete(text_until_cursor: str, namespace: dict[str, Any]) -> tuple[str, list[str]] | None:
    """Completions for the text before the cursor: ``(fragment replaced, candidates)``, or
    None when this is not a kiln context. Pure apart from the remote calls it makes."""
    in_string = _open_string_in_kiln_call(text_until_cursor)
    if in_string is not None:
        callee, args_before, prefix = in_string
        after_node = _AFTER_NODE.match(args_before)
        if callee in ("inspect", "remote_module") and after_node:
            parent = prefix.rpartition(".")[0]
            names = remote_names(after_node["node"], parent)
            return prefix, [n for n in names if n.startswith(prefix)]
        if (callee in _NODE_FIRST and not args_before.strip()) or _NODE_KEYWORD.search(args_before):
            return prefix, [n for n in node_names() if n.startswith(prefix)]
        return None
    m = _ATTRIBUTE.search(text_until_cursor)
    if m:
        target = _remote_module_at(m["expr"], namespace)
        if target is not None:
            attr = m["attr"]
            names = _cached(("attrs", target._kiln_node, target._kiln_name),
                            lambda: target._kiln_describe(refresh=True).names())
            # the whole ``expr.attr`` is replaced: what readline-style front ends expect too
            return m[0], [f"{m['expr']}.{n}" for n in names if n.startswith(attr)
                          and (attr.startswith("_") or not n.startswith("_"))]
    return None


def _open_string_in_kiln_call(text: str) -> tuple[str, str, str] | None:
    """When the cursor is inside a string literal that is an argument of a kiln function:
    (function name, the call's text before that string, the string typed so far)."""
    opens: list[int] = []  # positions of unclosed "("
    quote, quote_at = None, -1
    for i, ch in enumerate(text):
        if quote:
            if ch == quote and text[i - 1] != "\\":
                quote = None
        elif ch in "\"'":
            quote, quote_at = ch, i
        elif ch == "(":
            opens.append(i)
        elif ch == ")" and opens:
            opens.pop()
    if quote is None or not opens:
        return None
    m = _CALLEE.search(text[:opens[-1]])
    if not m:
        return None
    callee = m["callee"]
    module, _, name = callee.rpartition(".")
    if name not in _KILN_FUNCS or (module and module != "kiln" and not module.startswith("kiln.")):
        return None
    return name, text[opens[-1] + 1:quote_at], text[quote_at + 1:]


def _remote_module_at(expr: str, namespace: dict[str, Any]) -> RemoteModule | None:
    # Only a name and submodules of a proxy are followed: evaluating arbitrary code, or
    # fetching a remote value, on <TAB> could have side effects or move a lot of data.
    first, *rest = expr.split(".")
    obj = namespace.get(first)
    for attr in rest:
        if not isinstance(obj, RemoteModule):
            return None
        try:
            member = obj._kiln_describe().member(attr)
            if member is None or member["kind"] != "module":
                return None
            obj = getattr(obj, attr)
        except Exception as err:  # noqa: BLE001 - as in _cached: offer nothing, never raise
            log.debug("completion of %s: %r", attr, err)
            return None
    return obj if isinstance(obj, RemoteModule) else None


def _make_matcher(ip: Any):
    from IPython.core.completer import SimpleCompletion, context_matcher

    @context_matcher(priority=100, identifier="kiln")
    def kiln_matcher(context):
        found = complete(context.text_until_cursor, ip.user_ns)
        if not found or not found[1]:
            return {"completions": [], "suppress": False}
        fragment, names = found
        return {
            "completions": [SimpleCompletion(n, type="kiln") for n in names],
            "matched_fragment": fragment,
            # the cluster knows better than static analysis here
            "suppress": True,
        }

    return kiln_matcher


def load_ipython_extension(ip: Any) -> None:
    """Install kiln's completions in IPython (``%load_ext kiln``)."""
    unload_ipython_extension(ip)
    ip.Completer.custom_matchers.append(_make_matcher(ip))


def unload_ipython_extension(ip: Any) -> None:
    ip.Completer.custom_matchers[:] = [
        m for m in ip.Completer.custom_matchers
        if getattr(m, "matcher_identifier", None) != "kiln"
    ]

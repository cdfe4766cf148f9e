"""kiln.inspect, kiln.remote_module and IPython completion answered by the remote node."""

import importlib.util
import sys
import textwrap
import uuid

import pytest
from IPython.core.completer import provisionalcompleter
from IPython.core.interactiveshell import InteractiveShell

import kiln
from kiln.code import _ipython as kiln_ipython
from kiln.errors import UnknownNodeError

NODE = "local"


@pytest.fixture
def node_only_module(embedded, tmp_path):
    """A module that exists only on the node: its directory is on the agent's sys.path only."""
    name = f"kiln_nodeonly_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent('''
        """Helpers installed on the GPU node only."""
        SCALE = 3
        def only_on_node(x, *, power=2):
            """Raise x to a power, on the node."""
            return SCALE * x ** power
        class Tool:
            def run(self):
                return "ran"
    '''))

    def add_path(path):
        sys.path.insert(0, path)

    def remove_path(path, module):
        sys.path.remove(path)
        sys.modules.pop(module, None)

    kiln.call(NODE, add_path, str(tmp_path))
    assert importlib.util.find_spec(name) is None  # not on the driver
    kiln_ipython.clear_cache()
    yield name
    kiln.call(NODE, remove_path, str(tmp_path), name)


def test_inspect_a_node_gives_fingerprint_packages_devices_models_agents(embedded):
    report = kiln.inspect(NODE)
    assert report.node == NODE and report.state == "ready"
    assert report.python == "{}.{}.{}".format(*sys.version_info[:3])
    assert "numpyro" in {p.lower() for p in report.packages}
    assert any(d.get("framework") == "jax" and d.get("platform") == "cpu" for d in report.devices)
    assert [a["name"] for a in report.agents] == ["kiln-agent:local:cpu"]
    assert "code" in report.agents[0]["capabilities"]
    assert report.fingerprint.get("python")
    assert isinstance(report.models, list)
    assert "kiln-agent:local:cpu" in report._repr_html_()


def test_inspect_a_node_lists_the_models_its_agent_has_loaded(embedded):
    kiln.embed(["load the default encoder"], model="default")
    assert "embed:default" in kiln.inspect(NODE).models


def test_inspect_a_module_lists_names_and_signatures_as_the_node_sees_them(embedded):
    report = kiln.inspect(NODE, "numpyro.infer")
    assert report.kind == "module" and report.node == NODE
    mcmc = report.member("MCMC")
    assert mcmc["kind"] == "class" and "num_warmup" in mcmc["signature"]
    assert report.member("NUTS")["kind"] == "class"
    assert kiln.inspect(NODE, "numpyro.infer.MCMC.run").kind == "function"


def test_inspect_a_name_only_the_node_has(node_only_module):
    report = kiln.inspect(NODE, node_only_module)
    assert {"SCALE", "Tool", "only_on_node"} <= set(report.names())
    assert report.member("only_on_node")["signature"] == "(x, *, power=2)"
    assert report.member("only_on_node")["doc"] == "Raise x to a power, on the node."


def test_inspect_an_unknown_node_lists_the_known_ones(embedded):
    with pytest.raises(UnknownNodeError, match="local"):
        kiln.inspect("nope")


def test_inspect_a_missing_name_says_so_for_that_node(embedded):
    with pytest.raises(ModuleNotFoundError) as info:
        kiln.inspect(NODE, "no_such_module_anywhere")
    assert info.value.node == NODE
    with pytest.raises(AttributeError, match="has no attribute 'nope' on this node"):
        kiln.inspect(NODE, "json.nope")


def test_a_remote_module_proxy_calls_and_reads_on_the_node(node_only_module):
    m = kiln.remote_module(NODE, node_only_module)
    assert "only_on_node" in dir(m)
    assert m.only_on_node(2, power=3) == 24
    assert m.SCALE == 3
    assert m.Tool().run() == "ran"
    assert "(x, *, power=2)" in repr(m.only_on_node)
    with pytest.raises(AttributeError, match=f"on node {NODE}"):
        _ = m.missing_name
    assert isinstance(kiln.remote_module(NODE, "os").path, type(m))  # submodules are proxies


@pytest.fixture
def ip(embedded):
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "kiln")  # once per shell; later calls are no-ops
    assert [m for m in shell.Completer.custom_matchers
            if getattr(m, "matcher_identifier", None) == "kiln"]
    kiln_ipython.clear_cache()
    return shell


def _complete(shell, text):
    # the API Jupyter's kernel uses (provisional in IPython, hence the context manager)
    with provisionalcompleter():
        return [c.text for c in shell.Completer.completions(text, len(text))]


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # the legacy API, on purpose
def test_completion_offers_an_attribute_only_the_remote_node_has(ip, node_only_module):
    ip.user_ns["m"] = kiln.remote_module(NODE, node_only_module)
    assert _complete(ip, "m.only_") == ["m.only_on_node"]
    assert {"m.SCALE", "m.Tool", "m.only_on_node"} <= set(_complete(ip, "m."))
    ip.user_ns["o"] = kiln.remote_module(NODE, "os")
    assert _complete(ip, "o.path.joi") == ["o.path.join"]  # through a remote submodule
    # the legacy API (readline-style) gives the same name
    assert "m.only_on_node" in ip.complete("m.only_")[1]


def test_completion_offers_dotted_names_from_the_node(ip, node_only_module):
    text = f'kiln.inspect("local", "{node_only_module}.only'
    assert _complete(ip, text) == [f"{node_only_module}.only_on_node"]
    assert node_only_module in _complete(ip, f'kiln.remote_module("local", "{node_only_module[:12]}')


def test_completion_offers_node_names_inside_kiln_calls(ip):
    assert _complete(ip, 'kiln.call("lo') == ["local"]
    assert "local" in _complete(ip, "kiln.sample(model, chains=4, on='")
    assert "local" in _complete(ip, 'kiln.map(f, items, nodes=["')


def test_completion_outside_kiln_calls_is_left_to_ipython(ip):
    for text in ('print("lo', 'subprocess.call("lo', 'df.merge(on="lo', 'kiln.call("local", f, "lo'):
        assert kiln_ipython.complete(text, {}) is None, text
    ip.user_ns["plain_dict"] = {"alpha": 1}
    assert "plain_dict" in _complete(ip, "plain_d")


def test_completion_asks_the_node_once_while_its_answer_is_fresh_even_a_failed_one(caplog):
    caplog.set_level("DEBUG", logger="kiln")
    kiln_ipython.clear_cache()
    asked = []

    def unreachable() -> list[str]:
        asked.append(1)
        raise ConnectionError("no cluster")

    key = ("nodes", uuid.uuid4().hex)
    assert kiln_ipython._cached(key, unreachable) == []
    assert kiln_ipython._cached(key, unreachable) == []
    assert len(asked) == 1
    assert "no cluster" in caplog.text  # offered nothing, but said why in the log
    kiln_ipython.clear_cache()
    kiln_ipython._cached(key, unreachable)
    assert len(asked) == 2

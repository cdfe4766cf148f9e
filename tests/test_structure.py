"""How the code base is put together: rules a reviewer would otherwise check by hand.

- the import graph of ``src/kiln`` has no cycles;
- no capability folder imports another (bayes, embeddings, code); the gateway (serve) uses only
  embeddings' public names;
- no module is over 400 lines unless its docstring says why (a line starting "Long:");
- no public name of ``kiln`` (a function) is also the name of one of its modules;
- no run of six or more lines is written twice in ``src`` (blank lines, comments and imports
  aside).
"""

from __future__ import annotations

import ast
import hashlib
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "kiln"
CAPABILITIES = ("bayes", "embeddings", "code")
MAX_LINES = 400
RUN = 6


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The kiln modules ``name`` imports, at module level or inside functions."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    # imports under `if TYPE_CHECKING:` are for annotations only: never executed
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(block.test)
                   for stmt in block.body for n in ast.walk(stmt)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def folder(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in (*CAPABILITIES, "serve") else None


def test_the_import_graph_has_no_cycles():
    g = graph()
    # a module importing its own package's __init__ (for its re-exports) is not a cycle of
    # design; everything else is
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in g.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_capability_imports_another():
    bad = []
    for m, targets in graph().items():
        here = folder(m)
        for t in targets:
            there = folder(t)
            if here is None or there is None or here == there:
                continue
            if here == "serve" and t == "kiln.embeddings":
                continue  # the gateway uses embeddings' public names (LocalEncoder, models)
            bad.append(f"{m} -> {t}")
    assert bad == [], "capability folders importing each other:\n" + "\n".join(sorted(bad))


def test_no_module_is_long_without_saying_why():
    long = []
    for name, path in modules().items():
        lines = path.read_text().count("\n")
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > MAX_LINES and not any(ln.startswith("Long:") for ln in doc.splitlines()):
            long.append(f"{name}: {lines} lines")
    assert long == [], "modules over 400 lines with no 'Long:' reason:\n" + "\n".join(long)


def _code_lines(path: Path) -> list[tuple[int, str]]:
    out = []
    in_doc = False
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if line.startswith(('"""', "'''")):
            if not (len(line) > 3 and line.endswith(line[:3])):
                in_doc = not in_doc
            continue
        if in_doc or not line or line.startswith("#") or line.startswith(("import ", "from ")):
            continue
        if line in (")", "]", "}", "):", "else:", "try:", "finally:", "return", "pass"):
            continue
        out.append((number, " ".join(line.split())))
    return out


def test_no_run_of_six_lines_is_written_twice():
    seen: dict[str, list[str]] = defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = _code_lines(path)
        for k in range(len(lines) - RUN + 1):
            window = "\n".join(text for _, text in lines[k:k + RUN])
            digest = hashlib.sha1(window.encode()).hexdigest()
            seen[digest].append(f"{path.relative_to(SRC)}:{lines[k][0]}")
    repeated = sorted({tuple(sorted(set(places))) for places in seen.values()
                       if len({p.split(':')[0] + str(i) for i, p in enumerate(places)}) > 1
                       and len(set(places)) > 1})
    assert repeated == [], "the same six lines in several places:\n" + "\n".join(
        " ~ ".join(r) for r in repeated[:20])


def test_no_public_name_of_kiln_is_also_one_of_its_modules():
    # `kiln.embed` was both a function and a package: importing `kiln.embed.worker` rebound the
    # attribute to the package, so the function had to be made callable on the module
    import kiln

    submodules = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
                  if p.suffix == ".py" or (p / "__init__.py").exists()}
    clashes = sorted(n for n in kiln._LAZY if n in submodules)
    assert clashes == [], f"public names of kiln that are also its submodules: {clashes}"


# The modules a user imports; everything else is private (its name starts with "_") and is
# reached through its package's __init__, as httpx does.
PUBLIC_MODULES = {"kiln", "kiln.cli", "kiln.cluster", "kiln.errors", "kiln.bayes",
                  "kiln.embeddings", "kiln.code", "kiln.serve"}


def test_every_module_that_is_not_api_is_private():
    public = sorted(m for m in modules() if m not in PUBLIC_MODULES
                    and not m.rpartition(".")[2].startswith("_"))
    assert public == [], f"modules that are neither listed as API nor private: {public}"


def test_no_package_exports_a_name_that_is_also_its_submodule():
    # `from kiln.code.call import call` in kiln/code/__init__ made `kiln.code.call` the
    # function or the module depending on import order
    import importlib
    import inspect

    clashes = []
    for package in ("kiln", "kiln.bayes", "kiln.embeddings", "kiln.code", "kiln.serve"):
        mod = importlib.import_module(package)
        folder = PACKAGE.joinpath(*package.split(".")[1:])
        subs = {p.stem for p in folder.glob("*.py")} | {p.name for p in folder.iterdir()
                                                        if (p / "__init__.py").exists()}
        clashes += [f"{package}.{n}" for n in getattr(mod, "__all__", ()) if n in subs
                    and not inspect.ismodule(getattr(mod, n))]  # kiln.errors is the module
    assert clashes == [], f"exported names that are also submodules: {clashes}"

"""The house: imports flow `jobs -> pipelines -> animatediff_core`, the core's subpackages import only the
layers below them, no import circle anywhere, no folder of more than 15 modules, and no module outside the
core reaches for a private name of it. Read from the source (every import, the ones inside functions too)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("animatediff_core", "pipelines", "jobs")
# What each part of the core may import besides itself (animatediff_core/__init__.py says the same in words).
FOUNDATION = {"errors", "configs", "device", "redact"}
LAYERS = {
    "foundation": set(),
    "io": {"foundation"},
    "settings": {"foundation"},
    "models": {"foundation", "io", "settings"},
    "sampling": {"foundation", "io", "settings", "models"},
    "metrics": {"foundation", "io", "settings", "models", "sampling"},
    "training": {"foundation", "io", "settings", "models", "sampling"},
    "tiny": {"foundation", "io", "settings", "models", "sampling", "metrics", "training"},
}
MAX_MODULES = 15


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources(*packages: str) -> dict[str, Path]:
    return {module_name(p): p for pkg in packages for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import of a module in `known`."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name in known]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            for a in node.names:  # `from pkg import module` imports the module
                if f"{base}.{a.name}" in known:
                    out.append((f"{base}.{a.name}", [], node.lineno))
                elif base in known:
                    out.append((base, [a.name], node.lineno))
    return out


def graph(*packages: str) -> dict[str, set[str]]:
    found = sources(*packages)
    known = set(found)
    return {name: {m for m, _, _ in imports_of(name, path, known) if m != name} for name, path in found.items()}


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "package"
    if parts[1] in FOUNDATION:
        return "foundation"
    return parts[1]


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_anywhere():
    edges = graph(*PACKAGES)
    assert circles(edges) == [], "import circles: move what both sides need to the lower module"


def test_core_layers_import_only_the_layers_below():
    wrong = []
    for module, deps in graph("animatediff_core").items():
        mine = layer(module)
        if mine == "package":
            assert not deps, f"{module} imports {sorted(deps)}: package __init__ files hold no imports"
            continue
        allowed = LAYERS[mine] | {mine}
        wrong += [f"{module} -> {d} ({layer(d)})" for d in sorted(deps) if layer(d) not in allowed]
    assert not wrong, "imports that run up the core's layers:\n" + "\n".join(wrong)


def test_imports_flow_jobs_to_pipelines_to_core():
    order = {"animatediff_core": 0, "pipelines": 1, "jobs": 2}
    wrong = [f"{m} -> {d}" for m, deps in graph(*PACKAGES).items() for d in deps
             if order[d.split(".")[0]] > order[m.split(".")[0]]]
    assert not wrong, "imports against jobs -> pipelines -> animatediff_core:\n" + "\n".join(wrong)


def test_no_folder_holds_more_than_15_modules():
    for folder in [ROOT / "animatediff_core", *(p for p in (ROOT / "animatediff_core").iterdir() if p.is_dir())]:
        modules = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
        assert len(modules) <= MAX_MODULES, f"{folder.relative_to(ROOT)} holds {len(modules)} modules"
        if folder.name != "assets" and folder != ROOT / "animatediff_core":
            assert (folder / "__init__.py").read_text().startswith('"""'), f"{folder.name}/__init__.py: a docstring naming its files"


def test_nothing_outside_the_core_imports_its_private_names():
    core = set(sources("animatediff_core"))
    wrong = []
    for name, path in sources("pipelines", "jobs", "bench").items():
        tree = ast.parse(path.read_text(), str(path))
        aliases = {}  # local name -> core module
        for module, names, line in imports_of(name, path, core):
            wrong += [f"{path.relative_to(ROOT)}:{line} imports {module}.{n}" for n in names if n.startswith("_")]
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("animatediff_core"):
                for a in node.names:
                    if f"{node.module}.{a.name}" in core:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in core and a.asname:
                        aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id in aliases):
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    assert not wrong, "private names of animatediff_core used outside it:\n" + "\n".join(wrong)


def test_the_checks_see_a_circle_and_a_private_import(tmp_path):
    """The checks above can fail: a planted circle and a planted private import are found."""
    assert circles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    src = tmp_path / "x.py"
    src.write_text("from animatediff_core.io.bounded import _what\nfrom .sibling import y\n")
    found = imports_of("pipelines.x", src, {"animatediff_core.io.bounded", "pipelines.sibling"})
    assert ("animatediff_core.io.bounded", ["_what"], 1) in found and ("pipelines.sibling", ["y"], 2) in found

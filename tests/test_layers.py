"""The package tree is the map: imports only go down the data path, and no module imports itself back.

Layers, top to bottom (a module may import its own package and any package of a lower layer;
packages on one layer are independent of each other):

    alllabel.cli                        the command line
    alllabel.backend                    the Label Studio ML backend
    alllabel.evaluation                 the paper's protocol
    alllabel.prelabel                   pre-annotation
    alllabel.llm | alllabel.selection   the LLM endpoint | which tasks humans annotate
    alllabel.text | alllabel.env        shared text utilities | the environment reader

The imports are read from the source (every ``import``, also inside functions), not executed.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "alllabel"
# Each layer: its independent units; a unit is one or more module prefixes.
LAYERS = [
    [("alllabel.cli", "alllabel.__main__")],
    [("alllabel.backend",)],
    [("alllabel.evaluation",)],
    [("alllabel.prelabel",)],
    [("alllabel.llm",), ("alllabel.selection",)],
    [("alllabel.text",), ("alllabel.env",)],
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """The alllabel modules a file imports (``from a.b import c`` names a.b, or a.b.c if a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            modules = {f"{base}.{a.name}" for a in node.names if is_module(f"{base}.{a.name}")}
            found |= modules or {base}
    return {m for m in found if m == "alllabel" or m.startswith("alllabel.")}


def is_module(dotted: str) -> bool:
    path = ROOT / dotted.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def modules() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def layer_of(module: str) -> tuple[int, str] | None:
    for i, layer in enumerate(LAYERS):
        for unit in layer:
            if any(module == p or module.startswith(p + ".") for p in unit):
                return i, unit[0]
    return None


def test_every_module_has_a_layer():
    unplaced = [m for m in modules() if m != "alllabel" and layer_of(m) is None]
    assert not unplaced, f"modules outside the layers of this test: {unplaced}"


def test_imports_only_go_down_the_layers():
    wrong = []
    for module, deps in modules().items():
        if module == "alllabel":  # the public API's face re-exports from below
            continue
        mine = layer_of(module)
        for dep in deps:
            theirs = layer_of(dep)
            if dep == "alllabel" or theirs is None:
                wrong.append(f"{module} imports {dep} (outside the layers)")
            elif theirs[0] < mine[0] or (theirs[0] == mine[0] and theirs[1] != mine[1]):
                wrong.append(f"{module} ({mine[1]}) imports {dep} ({theirs[1]})")
    assert not wrong, "imports against the layer rule:\n" + "\n".join(sorted(wrong))


def test_no_import_cycle():
    mods = modules()
    graph = {m: {d for d in deps if d in mods} for m, deps in mods.items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m: str, path: list[str]) -> bool:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1 and d != m:
                cycle.extend(path[path.index(d) :] + [m, d] if d in path else [m, d])
                return True
            if d not in state and visit(d, path + [m]):
                return True
        state[m] = 2
        return False

    for m in sorted(graph):
        if m not in state and visit(m, []):
            break
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_the_rule_catches_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: a selection module importing the backend is reported."""
    fake = PACKAGE / "selection" / "_layer_probe.py"
    fake.write_text("from alllabel.backend import state\n")
    try:
        deps = modules()["alllabel.selection._layer_probe"]
        assert "alllabel.backend.state" in deps
        mine, theirs = (
            layer_of("alllabel.selection._layer_probe"),
            layer_of("alllabel.backend.state"),
        )
        assert theirs[0] < mine[0]
    finally:
        fake.unlink()

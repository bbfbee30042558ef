"""The package's import graph: no cycles, and no module importing from a package above its own.

Every ``import thinkctl…`` statement counts, at module level or inside a function (a lazy import is
still a dependency) or under ``TYPE_CHECKING``. Packages are layered bottom to top as listed in
``LAYERS``; a module may import its own package and packages of lower layers only. A new module or
package must be placed in a layer here, which is the point: where it sits is a decision.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "thinkctl"

#: bottom to top; names in one layer may not import each other (each is its own package)
LAYERS: list[set[str]] = [
    {"errors", "thinking", "stats"},
    {"answers", "batch", "fusion", "io", "models", "schedules"},
    {"config", "runs", "cards"},
    {"sampling", "prompts", "losses", "effort", "vllm_plugin"},
    {"decoding", "data"},
    {"rollout"},
    {"grading"},
    {"records"},
    {"report"},
    {"sweep"},
    {"controls"},  # thinking controls side by side: a grid of single-control sweeps and their summary
    {"tiny"},
    {"router"},  # per-query λ policies: below TrRa, whose adaptive teacher can take a policy's λ per problem
    {"training"},  # what TrRa and InRa training share: Trainer settings, frozen-model preparation, trace datasets
    {"trra", "inra"},  # the two methods are peers: what both need (the distillation loss) lives below
    {"serve"},
    {"api"},  # the public Python API: thin wrappers over the jobs the commands run
    {"cli", ""},  # "" is the package's own __init__, which wires the built-in benchmarks
]
RANK = {name: rank for rank, layer in enumerate(LAYERS) for name in layer}


def module_name(path: Path) -> str:
    parts = ["thinkctl", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str:
    """``thinkctl.inra.train`` → ``inra``; ``thinkctl.fusion`` → ``fusion``; ``thinkctl`` → ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports(path: Path, modules: set[str]) -> set[str]:
    """The thinkctl modules ``path`` imports (``from pkg import submodule`` resolves to the submodule)."""
    me = module_name(path)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = me.split(".") if is_package else me.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found |= {t for t in targets if t == "thinkctl" or t.startswith("thinkctl.")}
    return found - {me}


def graph() -> dict[str, set[str]]:
    paths = sorted(ROOT.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports(p, modules) for p in paths}


def test_every_package_has_a_layer():
    unplaced = sorted({package_of(m) for m in graph()} - set(RANK))
    assert not unplaced, f"place these in LAYERS (tests/test_layers.py): {unplaced}"


def test_no_module_imports_from_a_package_above_its_own():
    upward = [
        f"{src} ({package_of(src) or 'thinkctl'}) imports {dst} ({package_of(dst) or 'thinkctl'})"
        for src, targets in graph().items() for dst in sorted(targets)
        if package_of(src) != package_of(dst) and RANK[package_of(dst)] >= RANK[package_of(src)]
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(g.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(g):
        if node not in state and (cycle := visit(node)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))


def test_the_checker_sees_lazy_relative_and_type_checking_imports(tmp_path):
    """The walk must not miss the imports that are easy to miss."""
    pkg = tmp_path / "thinkctl" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import sibling\n"
        "if TYPE_CHECKING:\n    from thinkctl.cli import main\n"
        "def f():\n    import thinkctl.report\n"
    )
    (pkg / "mod.py").write_text(source)
    (pkg / "sibling.py").write_text("")
    global ROOT
    saved, ROOT = ROOT, tmp_path / "thinkctl"
    try:
        modules = {"thinkctl.pkg", "thinkctl.pkg.mod", "thinkctl.pkg.sibling"}
        assert imports(pkg / "mod.py", modules) == {"thinkctl.pkg.sibling", "thinkctl.cli", "thinkctl.report"}
    finally:
        ROOT = saved

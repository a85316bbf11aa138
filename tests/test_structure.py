"""The package's shape: data flows one way (01 -> 06), no import cycles, and only `workspace` knows the layout.

Read from the source with `ast` (nothing is imported), so the checks see imports inside functions too.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mura_aug"

# Bottom to top. A module may import its own layer and the layers below it, never a layer above.
LAYERS: List[Tuple[str, ...]] = [
    ("mura_aug", "mura_aug.errors"),
    ("mura_aug.workspace", "mura_aug.devices", "mura_aug.imaging", "mura_aug.settings"),
    ("mura_aug.metrics",),
    ("mura_aug.prepare",),
    ("mura_aug.gan",),
    ("mura_aug.synth",),
    ("mura_aug.evaluate",),
    ("mura_aug.notebooks",),
    ("mura_aug.cli", "mura_aug.__main__", "mura_aug.docs"),
]

# Names of the workspace layout (drive_layout.md). Only mura_aug/workspace.py may join them into paths: a path
# component equal to one of LAYOUT_NAMES, starting with one of LAYOUT_PREFIXES or holding one of LAYOUT_PARTS.
LAYOUT_NAMES = ("data", "images", "tables", "datasets", "experiments", "Augmented_Fakes", "results", "evaluation",
                "metrics", "weights", ".cache", "training_arrays", "training_options.json", "stats.jsonl",
                "reals.png", "run.lock", "manifest.csv", "summary.json", "runs.csv", "comparison.csv",
                "checkpoint.pt", "predictions.csv", "result.json", "demo", "runs", "notebooks")
LAYOUT_PREFIXES = ("state-", "network-", "fakes-", ".mura_aug_demo")
LAYOUT_PARTS = ("_prepare_summary", "_synth_summary", "_prepare_state", "_train_augmented", "_kimg")


def _is_layout_name(text: str) -> bool:
    return any(part in LAYOUT_NAMES or part.startswith(LAYOUT_PREFIXES) or any(p in part for p in LAYOUT_PARTS)
               for part in text.split("/") if part)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> Dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path, modules: Dict[str, Path]) -> Iterator[Tuple[int, str]]:
    """(line, module) for every import of a mura_aug module in the file, at any depth."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from pkg import module` imports the submodule; `from module import name` the module.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            if target == "mura_aug" or target.startswith("mura_aug."):
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                yield node.lineno, target


def layer_of(module: str) -> int:
    best, level = -1, None
    for index, names in enumerate(LAYERS):
        for prefix in names:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), index
    assert level is not None, f"{module} belongs to no layer: add it to LAYERS in {__file__}"
    return level


def import_graph() -> Dict[str, Set[str]]:
    modules = package_modules()
    return {name: {target for _, target in imported_modules(path, modules) if target != name}
            for name, path in modules.items()}


def test_every_module_has_a_layer():
    for name in package_modules():
        layer_of(name)


def test_no_module_imports_a_later_stage():
    modules = package_modules()
    upward = []
    for name, path in modules.items():
        for line, target in imported_modules(path, modules):
            if target == "mura_aug":
                continue  # the package face holds only the version and UserError
            if layer_of(target) > layer_of(name):
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert not upward, "imports against the flow 01 -> 06:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = import_graph()
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt == "mura_aug" or nxt not in graph:
                continue
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
    # The checker itself must be able to fail: a two-module cycle in a scratch package is reported.
    fake = tmp_path / "mura_aug"
    (fake / "gan").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "gan" / "__init__.py").write_text("")
    (fake / "gan" / "a.py").write_text("from mura_aug.gan import b\n")
    (fake / "gan" / "b.py").write_text("def f():\n    from mura_aug.gan.a import x\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    with pytest.raises(AssertionError, match="mura_aug.gan.a -> mura_aug.gan.b -> mura_aug.gan.a"):
        test_no_import_cycles()
    (fake / "prepare").mkdir()
    (fake / "prepare" / "__init__.py").write_text("")
    (fake / "prepare" / "x.py").write_text("import mura_aug.gan.a\n")
    with pytest.raises(AssertionError, match="prepare/x.py:1 imports mura_aug.gan.a"):
        test_no_module_imports_a_later_stage()


def _layout_strings(path: Path) -> Iterator[Tuple[int, str]]:
    """String parts joined into a path with `/` or given to .glob(): where layout names would hide."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        candidates = []
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            candidates = [node.right]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr in ("glob", "rglob", "joinpath", "with_name") and node.args:
            candidates = node.args[:1]
        for candidate in candidates:
            if isinstance(candidate, ast.Constant) and isinstance(candidate.value, str):
                texts = [candidate.value]
            elif isinstance(candidate, ast.JoinedStr):
                texts = [value.value for value in candidate.values
                         if isinstance(value, ast.Constant) and isinstance(value.value, str)]
            else:
                continue
            for text in texts:
                if _is_layout_name(text):
                    yield node.lineno, text


def test_only_the_workspace_joins_layout_names():
    found = []
    for name, path in package_modules().items():
        if name == "mura_aug.workspace":
            continue
        found += [f"{path.relative_to(PACKAGE.parent)}:{line}: {text!r}" for line, text in _layout_strings(path)]
    assert not found, "layout names joined outside mura_aug/workspace.py (ask the Workspace instead):\n" + \
        "\n".join(found)


def test_layout_check_finds_a_joined_name(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('def f(ws, run):\n    return ws.root / "data" / "experiments" / run / "stats.jsonl"\n'
                      'def g(d):\n    return sorted(d.glob("network-*kimg.pt"))\n')
    assert sorted(text for _, text in _layout_strings(sample)) == ["data", "experiments", "network-*kimg.pt",
                                                                    "stats.jsonl"]

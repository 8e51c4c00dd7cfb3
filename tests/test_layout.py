"""The layout's promise: imports run one way along the data flow, and the CLI reads each default
from where it is declared.

scrapers -> papertasks (the training library) -> export -> serving; deployment/ (the Space) imports
nothing else of the repo and every stage may use its predictor; papertasks.cli alone imports every
stage. Lazy imports inside functions count as imports.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("deployment", "scrapers", "papertasks", "export", "serving")
BASE = {"papertasks.errors", "papertasks.io", "papertasks.paths", "papertasks.cli_support"}  # used by every stage
RANK = {"base": 0, "deployment": 0, "scrapers": 1, "papertasks": 2, "export": 3, "serving": 4, "cli": 5}
SPACE_SIBLINGS = {"predictor", "inputs", "truncation", "registry", "manifest"}  # the Space runs its files side by side


def stage(module: str) -> str:
    if module in BASE:
        return "base"
    if module == "papertasks.cli":
        return "cli"
    return module.split(".")[0]


def repo_modules() -> dict[str, Path]:
    return {".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): path
            for package in PACKAGES for path in (REPO / package).rglob("*.py")}


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """Repo modules that `module` imports, at the top or inside functions."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            elif module.startswith("deployment.") and node.module in SPACE_SIBLINGS:
                base = f"deployment.{node.module}"
            else:
                base = node.module
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = repo_modules()
    return {module: imports_of(module, path, set(modules)) for module, path in modules.items()}


def test_every_stage_imports_only_downward(graph):
    wrong = []
    for module, imported in graph.items():
        for target in imported:
            if stage(module) == "deployment":
                ok = stage(target) == "deployment"
            elif stage(module) == "base":
                ok = stage(target) == "base"
            else:
                ok = RANK[stage(target)] <= RANK[stage(module)]
            if not ok:
                wrong.append(f"{module} ({stage(module)}) imports {target} ({stage(target)})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles(graph):
    """Tarjan's strongly connected components: any with two or more modules is a circle."""
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.add(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    assert not cycles, cycles


def test_only_the_cli_imports_every_stage(graph):
    stages = {"scrapers", "export", "serving"}
    everywhere = [m for m, imported in graph.items() if stages <= {stage(t) for t in imported}]
    assert everywhere == ["papertasks.cli"]


def test_the_cli_reads_each_default_from_where_it_is_declared():
    """Each command's options default to the values its config or function declares."""
    from papertasks.cli import build_parser
    from papertasks.cli_support import declared_defaults
    from papertasks.data import PrepareConfig
    from papertasks.refit import RefitConfig
    from papertasks.train import TrainConfig
    from serving.api import Settings

    parser = build_parser()
    commands = {"prepare": (["prepare", "in.jsonl", "--out", "d"], PrepareConfig),
                "train": (["train", "--data", "d", "--out", "m"], TrainConfig),
                "refit-head": (["refit-head", "--model", "m", "--data", "d", "--out", "o"], RefitConfig),
                "serve": (["serve"], Settings)}
    for name, (argv, source) in commands.items():
        args = vars(parser.parse_args(argv))
        declared = declared_defaults(source)
        shared = set(args) & set(declared)
        assert len(shared) >= 4, name
        assert {k: args[k] for k in shared} == {k: declared[k] for k in shared}, name
    from export.onnx_export import export_bundle

    args = parser.parse_args(["export", "--model", "m"])
    assert (args.max_prob_diff, args.min_same_set, args.weights, args.parity_texts) == tuple(
        declared_defaults(export_bundle)[k] for k in ("max_prob_diff", "min_same_set", "weights", "parity_texts"))
    assert parser.parse_args(["worker"]).queue == [Settings().queue]

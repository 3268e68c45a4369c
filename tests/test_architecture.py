"""The shape of the package: every module imports, the imports between cnnlab's modules run one way
(no cycle), and the readers of a run folder leave torch and matplotlib unimported."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections import deque
from pathlib import Path

import pytest

from cnnlab.errors import CnnlabError
from cnnlab.run_folder import read_config, read_history, read_metrics

SRC = Path(__file__).resolve().parents[1] / "src" / "cnnlab"

# Walks the package in a fresh interpreter, importing every module, and prints {module: its file}.
# pkgutil lists packages with an __init__.py; a folder of modules without one (a namespace package,
# such as engine/) is walked too.
IMPORT_ALL = """
import importlib, importlib.util, json, pkgutil
from pathlib import Path
import cnnlab

def walk(package):
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        if info.name == "cnnlab.__main__":  # importing it runs the command line
            files[info.name] = importlib.util.find_spec(info.name).origin
            continue
        module = importlib.import_module(info.name)
        files[info.name] = module.__file__
        if info.ispkg:
            walk(module)
    for folder in package.__path__:
        for sub in sorted(Path(folder).iterdir()):
            if sub.is_dir() and not (sub / "__init__.py").exists() and any(sub.glob("*.py")):
                walk(importlib.import_module(f"{package.__name__}.{sub.name}"))

files = {"cnnlab": cnnlab.__file__}
walk(cnnlab)
print(json.dumps(files))
"""


@pytest.fixture(scope="module")
def module_files() -> dict[str, Path]:
    r = subprocess.run([sys.executable, "-c", IMPORT_ALL], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    return {name: Path(path) for name, path in json.loads(r.stdout.splitlines()[-1]).items()}


def test_every_module_imports_in_a_fresh_interpreter(module_files):
    on_disk = {p.resolve() for p in SRC.rglob("*.py")}
    assert {p.resolve() for p in module_files.values()} == on_disk


def import_graph(files: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {each cnnlab module it imports: the line of the first such import}, from the source.

    Imports at any depth count (a function's own import too), relative ones resolved. `from P import
    name` is an import of the submodule P.name where there is one, else of P itself: the package's
    __init__ importing its submodules is no cycle with them, unless one of them imports P back."""
    graph: dict[str, dict[str, int]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # from . import x, from ..y import z
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for target in targets:
                if target in files and target != name:
                    edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def _reachable(graph: dict[str, dict[str, int]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Shortest cycles, as [a, b, ..., a], until every module on a cycle is on one of them: each module
    that imports back a module importing it shows where it does."""
    reach = {m: _reachable(graph, m) for m in graph}
    cycles: list[list[str]] = []
    covered: set[str] = set()
    for start in sorted(graph):
        if start in covered or start not in reach[start]:
            continue
        group = {m for m in reach[start] if start in reach[m]}  # the modules that import one another with it
        came_from: dict[str, str] = {}
        todo = deque([start])
        while todo:  # breadth first inside the group, back to start
            m = todo.popleft()
            if start in graph[m]:
                path = [m]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                cycles.append([*reversed(path), start])
                covered |= set(path)
                break
            for nxt in sorted(graph[m]):
                if nxt in group and nxt not in came_from and nxt != start:
                    came_from[nxt] = m
                    todo.append(nxt)
    return cycles


def test_the_imports_between_modules_form_no_cycle(module_files):
    graph = import_graph(module_files)
    assert graph["cnnlab.reproduce"], "the graph finds cnnlab's own imports"
    cycles = find_cycles(graph)
    described = [
        " -> ".join(cycle)
        + ": "
        + "; ".join(
            f"{module_files[a].relative_to(SRC.parent)}:{graph[a][b]} imports {b}" for a, b in zip(cycle, cycle[1:])
        )
        for cycle in cycles
    ]
    assert not cycles, "import cycles:\n" + "\n".join(described)


# docs/ARCHITECTURE.md's layers, top to bottom: a module imports from its own layer or lower ones
LAYERS = [
    ["cli", "__main__"],
    ["api", "reproduce", "sweep", "search", "lr_find"],  # api: cnnlab.train / open_run; search: Optuna sweeps
    ["run", "serve", ""],  # "": the package's __init__ (cnnlab.load)
    ["report", "evaluation"],
    ["engine", "plan"],
    ["data", "models"],
    ["config", "registry", "run_folder", "metrics", "worked", "text", "errors"],
]


def layer_of(module: str) -> int:
    """The rank of `module`'s layer, 0 at the top (cnnlab.run_folder -> run_folder; cnnlab -> "")."""
    top = module.split(".")[1] if "." in module else ""
    ranks = [i for i, names in enumerate(LAYERS) if top in names]
    assert ranks, f"{module} is in no layer of LAYERS: add it here and to docs/ARCHITECTURE.md"
    return ranks[0]


# The package's __init__ is the public facade: it gives cnnlab.train, cnnlab.open_run and cnnlab.Run from
# cnnlab.api when first asked for (a module __getattr__), so `import cnnlab` stays light. That is the one
# import from a layer above allowed, by name.
FACADE = {("cnnlab", "cnnlab.api")}


def test_imports_follow_the_documented_layers(module_files):
    graph = import_graph(module_files)
    upwards = [
        f"{module_files[a].relative_to(SRC.parent)}:{line} imports {b}, a layer above"
        for a, edges in graph.items()
        for b, line in edges.items()
        if layer_of(b) < layer_of(a) and (a, b) not in FACADE
    ]
    assert not upwards, "\n".join(upwards)


def test_the_cycle_finder_sees_a_package_that_its_submodule_imports_back():
    graph = {"p": {"p.a": 1, "p.b": 1}, "p.a": {"p": 3}, "p.b": {"q": 2}, "q": {}}
    assert find_cycles(graph) == [["p", "p.a", "p"]]
    assert find_cycles({"p": {"p.a": 1}, "p.a": {"q": 1}, "q": {}}) == []
    two = {"p": {"p.a": 1, "p.b": 1}, "p.a": {"p": 1}, "p.b": {"p": 1}}
    assert find_cycles(two) == [["p", "p.a", "p"], ["p.b", "p", "p.b"]]  # each module that imports p back


# Reads a run folder in a fresh interpreter and prints what it read and which heavy modules came in.
READ_RUN = """
import json, sys
from cnnlab.run_folder import read_config, read_history, read_metrics, read_steps
run = sys.argv[1]
read = [read_config(run), read_history(run), read_metrics(run), read_steps(run)]
print(json.dumps({"read": read, "imported": [m for m in ("torch", "matplotlib") if m in sys.modules]}))
"""


def _write_run(run: Path) -> None:
    run.mkdir()
    (run / "config.yaml").write_text("name: tiny\ntrain:\n  epochs: 2\n  lr: 0.1\n")
    (run / "history.csv").write_text("epoch,train_loss,val_loss\n1,0.9,\n2,0.5,0.6\n")
    (run / "metrics.json").write_text(json.dumps({"test": {"accuracy": 0.75, "num_samples": 4}, "epochs_run": 2}))


def test_the_run_folder_readers_import_neither_torch_nor_matplotlib(tmp_path):
    run = tmp_path / "run"
    _write_run(run)
    r = subprocess.run([sys.executable, "-c", READ_RUN, str(run)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["imported"] == []
    assert out["read"] == [
        {"name": "tiny", "train": {"epochs": 2, "lr": 0.1}},
        [{"epoch": "1", "train_loss": "0.9", "val_loss": ""}, {"epoch": "2", "train_loss": "0.5", "val_loss": "0.6"}],
        {"test": {"accuracy": 0.75, "num_samples": 4}, "epochs_run": 2},
        [],  # no steps.csv
    ]


@pytest.mark.parametrize(
    "reader, name", [(read_config, "config.yaml"), (read_history, "history.csv"), (read_metrics, "metrics.json")]
)
def test_a_missing_or_unreadable_file_is_one_line_naming_it(tmp_path, reader, name):
    run = tmp_path / "run"
    _write_run(run)
    (run / name).unlink()
    with pytest.raises(CnnlabError, match=f"has no {name}") as missing:
        reader(run)
    (run / name).write_bytes(b"\xff\xfe{[: not text\n\x00")
    with pytest.raises(CnnlabError, match=re.escape(f"cannot read {run / name}")) as unreadable:
        reader(run)
    for e in (missing.value, unreadable.value):
        assert "\n" not in str(e) and str(run) in str(e)


MAX_FUNCTION_LINES = 60  # from the def line to the function's last line, decorators left out


def long_functions(files) -> list[str]:
    """file:line name (N lines) of every function or method over MAX_FUNCTION_LINES in `files`."""
    found = []
    for path in files:
        for node in ast.walk(ast.parse(Path(path).read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    found.append(f"{Path(path).relative_to(SRC.parent)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_is_longer_than_a_screen():
    found = long_functions(sorted(SRC.rglob("*.py")))
    assert not found, "split these into named steps:\n" + "\n".join(found)


def test_the_length_check_counts_from_def_to_the_last_line(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES - 1))
    fits = tmp_path / "fits.py"
    fits.write_text(f"@staticmethod\ndef fits():\n{body}\n")  # def + 59 lines: 60
    over = tmp_path / "over.py"
    over.write_text(f"class A:\n    def over(self):\n    {body.replace(chr(10), chr(10) + '    ')}\n        return 1\n")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(sys.modules[__name__], "SRC", tmp_path / "src")
        assert long_functions([fits]) == []
        assert long_functions([over]) == ["over.py:2 over (61 lines)"]

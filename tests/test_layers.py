"""Layers import downward only: the base (names, config, errors, the experiment reader) -> data -> model -> train ->
the search (the only layer with Ray) | the analysis (Ray-free). Read two ways: every ``tune_fusion`` import of every
module, parsed (also those inside functions: a lazy upward import is an upward import), and what importing each
layer really loads, in a fresh interpreter. Also: every module names its public surface in ``__all__``, and the
tests, benchmarks and command-line scripts import from it only."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

PACKAGE = REPO / "tune_fusion"
BASE = {"tune_fusion", "tune_fusion._dgl_compat", "tune_fusion.errors", "tune_fusion.names", "tune_fusion.units",
        "tune_fusion.config", "tune_fusion.cli", "tune_fusion.results", "tune_fusion.experiment"}
SEARCH = {"tune_fusion.trainable", "tune_fusion.cluster", "tune_fusion.space", "tune_fusion.searcher",
          "tune_fusion.warm_start", "tune_fusion.console", "tune_fusion.search", "tune_fusion.confirm",
          "tune_fusion.interrupt", "tune_fusion.lease", "tune_fusion.storage"}
ANALYSIS = {"tune_fusion.export", "tune_fusion.ablation", "tune_fusion.diagnostics", "tune_fusion.plots",
            "tune_fusion.report", "tune_fusion.importance", "tune_fusion.analysis"}
TRAIN = {"tune_fusion.checkpoint", "tune_fusion.train", "tune_fusion.train.__main__"}
# what each layer may import from the package (its own layer included); the search and the analysis are siblings
MAY_IMPORT = {"base": {"base"}, "data": {"base", "data"}, "model": {"base", "data", "model"},
              "train": {"base", "data", "model", "train"}, "search": {"base", "data", "model", "train", "search"},
              "analysis": {"base", "data", "model", "train", "analysis"}}
# third-party packages a layer never imports, anywhere in its code; and those it imports only inside the functions
# that need them, never when it is imported (the experiment reader opens a study, the analysis ranks parameters)
NEVER = {"base": {"ray"}, "data": {"ray", "optuna"}, "model": {"ray", "optuna"}, "train": {"ray", "optuna"},
         "analysis": {"ray"}}
NOT_AT_IMPORT = {"base": {"torch", "matplotlib", "optuna"}, "analysis": {"optuna"}}


def modules() -> dict[str, Path]:
    """Every module of the package by its dotted name."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def layer(module: str) -> str:
    for name, members in (("base", BASE), ("search", SEARCH), ("analysis", ANALYSIS), ("train", TRAIN)):
        if module in members:
            return name
    if module.startswith(("tune_fusion.data.", "tune_fusion.model.")) or module in ("tune_fusion.data",
                                                                                      "tune_fusion.model"):
        return module.split(".")[1]
    raise AssertionError(f"{module} belongs to no layer: add it to one in tests/test_layers.py")


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) of every import in the file, ``if TYPE_CHECKING:`` blocks left
    out (they never run). ``from tune_fusion import x`` names the submodule x where there is one."""
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for child in node.body for n in ast.walk(child)}
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules()]
            found += [(name, node.lineno, id(node) in top) for name in names or [node.module]]
    return found


def test_every_module_imports_only_its_own_layer_and_the_layers_below():
    wrong = []
    for module, path in modules().items():
        here = layer(module)
        for imported, line, top in imports(path):
            if imported.split(".")[0] == "tune_fusion" and layer(imported) not in MAY_IMPORT[here]:
                wrong.append(f"{path.relative_to(REPO)}:{line} ({here}) imports {imported} ({layer(imported)})")
            if imported.split(".")[0] in NEVER.get(here, set()) | (NOT_AT_IMPORT.get(here, set()) if top else set()):
                wrong.append(f"{path.relative_to(REPO)}:{line} ({here}) imports {imported}"
                             + (" at module level" if top else ""))
    assert not wrong, "imports above their layer:\n" + "\n".join(wrong)


LOADED = """
import importlib, json, sys
layers = json.loads(sys.argv[1])

def loaded(prefixes):
    return sorted(m for m in sys.modules if any(m == p or m.startswith(p + ".") for p in prefixes))

found = {}
for name, members, forbidden in layers:
    for module in members:
        importlib.import_module(module)
    found[name] = loaded(forbidden)
print(json.dumps(found))
"""


def test_importing_a_layer_loads_nothing_above_it():
    """In one fresh interpreter, layer by layer upwards: after importing every module of a layer (and those below),
    nothing of a layer above, no Ray, and what each layer must not load is not loaded."""
    by_layer: dict[str, list[str]] = {}
    for module in modules():
        by_layer.setdefault(layer(module), []).append(module)
    upper_of_data = sorted(by_layer["model"] + by_layer["train"] + by_layer["search"] + by_layer["analysis"])
    steps = [("base", by_layer["base"], ["ray", "torch", "matplotlib", "optuna"] + sorted(set(modules()) - BASE)),
             ("data", by_layer["data"], ["ray", "optuna"] + upper_of_data),
             ("model", by_layer["model"], ["ray", "optuna"] + sorted(by_layer["train"] + by_layer["search"]
                                                                     + by_layer["analysis"])),
             ("train", by_layer["train"], ["ray", "optuna"] + sorted(by_layer["search"] + by_layer["analysis"])),
             ("analysis", by_layer["analysis"], ["ray", "optuna.samplers"] + sorted(by_layer["search"]))]
    done = subprocess.run([sys.executable, "-c", LOADED, json.dumps(steps)], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == {name: [] for name, _, _ in steps}, found


def public_names(path: Path) -> list[str] | None:
    """The module's ``__all__``, read from its source (None when it has none)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return None


def defined_names(path: Path) -> set[str]:
    """What the module defines or imports at its top level."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return names


def test_every_module_names_its_public_surface():
    lacking, unknown = [], []
    for module, path in modules().items():
        listed = public_names(path)
        if listed is None:
            lacking.append(module)
        else:
            unknown += [f"{module}.{n}" for n in listed if n not in defined_names(path)]
    assert not lacking and not unknown, (lacking, unknown)


def test_tests_benchmarks_and_scripts_use_the_public_surface_only():
    """What they import from a ``tune_fusion`` module is in its ``__all__`` (a submodule, or a name with a leading
    underscore that a test reaches for on purpose, excepted)."""
    files = [*REPO.glob("tests/*.py"), *REPO.glob("benchmarks/*.py"), *REPO.glob("*.py")]
    found = modules()
    outside = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in found:
                listed = public_names(found[node.module]) or []
                outside += [f"{path.relative_to(REPO)}:{node.lineno} {node.module}.{a.name}" for a in node.names
                            if a.name not in listed and not a.name.startswith("_")
                            and f"{node.module}.{a.name}" not in found]
    assert not outside, "\n".join(outside)

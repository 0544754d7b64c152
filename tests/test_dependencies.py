"""dvc.yaml's code deps are each stage's import closure, and the package's groups import in one direction.

The closure is found by walking the imports (ast) from `stages/<name>.py` through every project
module it reaches, lazy imports inside functions included. The only files left out are the
package markers, and only while they are empty (an empty file can change no output).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

PROJECT_PACKAGES = ("cxr", "stages")
# Left out of deps on purpose: empty package markers run no code, so they can change no output.
ALLOWED_OUTSIDE_DEPS = {"cxr/__init__.py", "cxr/data/__init__.py", "cxr/model/__init__.py", "cxr/train/__init__.py",
                        "cxr/evaluate/__init__.py", "cxr/validation/__init__.py", "stages/__init__.py"}  # fmt: skip
# The groups of cxr/, in the only order they may import each other: a group imports only groups
# to its left (core = the modules directly in cxr/). train and evaluate do not import each other;
# validation (cross-validation, external sets) composes both.
GROUP_ORDER = ("core", "data", "model", "train", "evaluate", "validation")
INDEPENDENT = {("evaluate", "train"), ("train", "evaluate")}


def module_file(module: str, root: Path = REPO) -> Path | None:
    """The file a project module name refers to (module.py or package/__init__.py), else None."""
    if module.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = root / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports_of(path: Path, root: Path = REPO) -> set[Path]:
    """Project files imported by `path`, with the packages a dotted import runs on the way."""
    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import name`: name may be a submodule (`from cxr.model import decisions`)
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                file = module_file(".".join(parts[:i]), root)
                if file is not None:
                    found.add(file)
    return found


def import_closure(entry: Path, root: Path = REPO) -> set[str]:
    """Every project file `entry` runs, as repository-relative posix paths (entry included)."""
    seen, todo = set(), [entry]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo += imports_of(path, root) - seen
    return {p.relative_to(root).as_posix() for p in seen}


def stage_code(root: Path = REPO) -> dict[str, tuple[set[str], set[str]]]:
    """Per stage in dvc.yaml: (import closure of its entry point, code files listed in its deps)."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        module = stage["cmd"].split("python -m ", 1)[1].split()[0]
        closure = import_closure(module_file(module, root), root)
        deps = {d for d in stage.get("deps", []) if d.endswith(".py")}
        out[name] = (closure - ALLOWED_OUTSIDE_DEPS, deps)
    return out


@pytest.mark.parametrize("stage", list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]))
def test_stage_deps_are_its_import_closure(stage):
    closure, deps = stage_code()[stage]
    missing, extra = sorted(closure - deps), sorted(deps - closure)
    assert not missing and not extra, (
        f"dvc.yaml stage {stage!r}: add to deps {missing} (imported, so a change must rerun it); "
        f"remove from deps {extra} (not imported); `python -m tests.sync_deps` rewrites them"
    )


def test_left_out_package_markers_are_empty():
    for name in sorted(ALLOWED_OUTSIDE_DEPS):
        assert (REPO / name).read_text().strip() == "", f"{name} has code: list it in dvc.yaml deps instead"


def test_the_walk_finds_a_removed_dep(tmp_path):
    """The check itself can fail: drop one import from a stage's deps and it is named."""
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    removed = "cxr/model/decisions.py"
    dvc_yaml["stages"]["evaluate"]["deps"].remove(removed)
    for name in ("cxr", "stages"):
        (tmp_path / name).symlink_to(REPO / name)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml))
    closure, deps = stage_code(tmp_path)["evaluate"]
    assert closure - deps == {removed}


def group_of(path: str) -> str:
    parts = path.split("/")
    return parts[1] if len(parts) > 2 else "core"


def test_groups_import_in_one_direction_only():
    """No cycles between cxr's groups: each imports only groups before it in GROUP_ORDER."""
    wrong = []
    for file in sorted((REPO / "cxr").rglob("*.py")):
        here = group_of(file.relative_to(REPO).as_posix())
        for dep in imports_of(file):
            there = group_of(dep.relative_to(REPO).as_posix())
            if there == here or (dep.name == "__init__.py" and not dep.read_text().strip()):
                continue
            if GROUP_ORDER.index(there) > GROUP_ORDER.index(here) or (here, there) in INDEPENDENT:
                wrong.append(f"{file.relative_to(REPO)} ({here}) imports {dep.relative_to(REPO)} ({there})")
    assert not wrong, "imports against the group order " + " < ".join(GROUP_ORDER) + ":\n" + "\n".join(wrong)


def test_no_import_cycles_between_modules():
    graph = {f: imports_of(f) - {f} for f in (REPO / "cxr").rglob("*.py")}
    state: dict[Path, int] = {}

    def visit(node: Path, trail: list[Path]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt) :] + [nxt] if nxt in trail else [node, nxt]
                raise AssertionError("import cycle: " + " -> ".join(str(p.relative_to(REPO)) for p in cycle))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])


def test_functions_are_short_with_few_arguments():
    """Longest function in cxr/ under 60 lines; none over 8 arguments."""
    long, wide = [], []
    for file in sorted((REPO / "cxr").rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                where = f"{file.relative_to(REPO)}:{node.lineno} {node.name}"
                lines = node.end_lineno - node.lineno + 1
                args = node.args
                listed = args.posonlyargs + args.args + args.kwonlyargs
                count = len(listed) - (1 if listed and listed[0].arg in ("self", "cls") else 0)
                if lines >= 60:
                    long.append(f"{where}: {lines} lines")
                if count > 8:
                    wide.append(f"{where}: {count} arguments")
    assert not long and not wide, "\n".join(long + wide)


def test_runtime_knobs_are_no_params_deps_and_every_other_train_key_is():
    from cxr.config import RUNTIME_KEYS

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    result_keys = {f"train.{k}" for k in params["train"]} - set(RUNTIME_KEYS)
    for name in ("train", "crossval"):
        listed = set(stages[name]["params"])
        assert not listed & set(RUNTIME_KEYS), f"{name}: runtime knobs listed as params deps"
        assert result_keys <= listed, f"{name}: missing {sorted(result_keys - listed)}"

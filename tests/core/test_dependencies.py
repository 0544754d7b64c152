"""dvc.yaml's code deps are each stage's import closure, and the package's groups import in one direction.

The closure is found by walking the imports (ast) from `stages/<name>.py` through every project
module it reaches, lazy imports inside functions included. The only files left out are the
package markers, and only while they are empty (an empty file can change no output).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from scripts.sync_deps import ALLOWED_OUTSIDE_DEPS, imports_of, stage_code
from tests.conftest import REPO

# The groups of cxr/, in the only order they may import each other: a group imports only groups
# to its left (core = the modules directly in cxr/). train and evaluate do not import each other;
# validation (cross-validation, external sets) composes both.
GROUP_ORDER = ("core", "data", "model", "train", "evaluate", "validation", "serve")
INDEPENDENT = {("evaluate", "train"), ("train", "evaluate")}


@pytest.mark.parametrize("stage", list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]))
def test_stage_deps_are_its_import_closure(stage):
    closure, deps = stage_code()[stage]
    missing, extra = sorted(closure - deps), sorted(deps - closure)
    assert not missing and not extra, (
        f"dvc.yaml stage {stage!r}: add to deps {missing} (imported, so a change must rerun it); "
        f"remove from deps {extra} (not imported); `python -m scripts.sync_deps` rewrites them"
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


def _class_members(files) -> tuple[set[str], set[str]]:
    """(class names, names a class body defines: fields, class attributes, methods, properties)."""
    classes, members = set(), set()
    for file in files:
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ClassDef):
                classes.add(node.name)
                for item in node.body:
                    if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        members.add(item.target.id)
                    elif isinstance(item, ast.Assign):
                        members.update(t.id for t in item.targets if isinstance(t, ast.Name))
                    elif isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        members.add(item.name)
    return classes, members


def train_layer_vocabulary() -> tuple[set[str], set[str]]:
    """(the train layer's class names, the attribute names only its classes define): a name torch's
    modules and optimizers, or a class of the layers below, also define is not the train layer's."""
    import torch

    below = [f for f in (REPO / "cxr").rglob("*.py") if group_of(f.relative_to(REPO).as_posix()) in GROUP_ORDER[:3]]
    classes, members = _class_members(sorted((REPO / "cxr" / "train").glob("*.py")))
    _, shared = _class_members(below)
    torch_types = (torch.nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Generator, torch.cuda.Event,
                   torch.cuda.Stream, torch.export.ExportedProgram)  # fmt: skip
    torch_names = set().union(*(dir(t) for t in torch_types))
    return classes, {m for m in members - shared - torch_names if not m.startswith("__")}


def reaches_into_train(source: str, where: str, classes: set[str], attributes: set[str]) -> list[str]:
    """Places in `source` that use a train-layer object: a parameter typed as (or named after) one of
    its classes, or an attribute only its classes define read off anything but `self`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for arg in node.args.posonlyargs + node.args.args + node.args.kwonlyargs:
                hint = ast.unparse(arg.annotation) if arg.annotation else ""
                if arg.arg in ("run", "fit") or classes & set(re.findall(r"\w+", hint)):
                    found.append(f"{where}:{node.lineno} {node.name}() takes {arg.arg}: {hint or 'untyped'}")
        elif isinstance(node, ast.Attribute) and node.attr in attributes:
            if not (isinstance(node.value, ast.Name) and node.value.id == "self"):
                found.append(f"{where}:{node.lineno} reads .{node.attr} ({ast.unparse(node)})")
    return found


def test_the_model_layer_never_reaches_into_train_objects():
    """No import arrow is enough: cxr/model/ may not take a Run/Fit or read their attributes either."""
    classes, attributes = train_layer_vocabulary()
    found = []
    for file in sorted((REPO / "cxr" / "model").glob("*.py")):
        found += reaches_into_train(file.read_text(), str(file.relative_to(REPO)), classes, attributes)
    assert not found, "cxr/model/ uses the train layer's objects (move the code to cxr/train/):\n" + "\n".join(found)


def test_the_attribute_check_finds_a_training_state_saved_by_the_model_layer():
    """The check can fail: the training-state saver as cxr/model/checkpoint.py once had it is named."""
    classes, attributes = train_layer_vocabulary()
    old = (
        "def save_training_state(path, run, epoch):\n"
        "    return {'average': run.fit.average.state_dict(), 'scaler': run.scaler.state_dict(),\n"
        "            'batch_rng': run.generator.get_state(), 'best_model': run.best_weights}\n"
        "def typed(state: 'Fit | None'):\n"
        "    return state\n"
    )
    found = reaches_into_train(old, "old.py", classes, attributes)
    assert any("takes run" in f for f in found) and any("takes state: 'Fit | None'" in f for f in found)
    read = {f.split()[2] for f in found if "reads" in f}
    assert {".fit", ".average", ".scaler", ".generator", ".best_weights"} <= read

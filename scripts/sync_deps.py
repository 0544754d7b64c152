"""Rewrite each stage's code deps in dvc.yaml to its import closure: `python -m scripts.sync_deps`.

Data deps, params, outs and comments are kept; only the `.py` entries of each `deps:` list are
replaced, entry point first. tests/test_dependencies.py checks the result.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("cxr", "stages")
# Left out of deps on purpose: empty package markers run no code, so they can change no output.
ALLOWED_OUTSIDE_DEPS = {"cxr/__init__.py", "cxr/data/__init__.py", "cxr/model/__init__.py", "cxr/train/__init__.py",
                        "cxr/evaluate/__init__.py", "cxr/validation/__init__.py", "stages/__init__.py"}  # fmt: skip


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


def main() -> None:
    code = stage_code()
    out, stage, in_deps = [], None, False
    for line in (REPO / "dvc.yaml").read_text().splitlines():
        named = re.match(r"^  (\w+):\s*(#.*)?$", line)
        stage = named.group(1) if named else stage
        if re.match(r"^    deps:", line):
            in_deps = True
            out.append(line)
            out += [f"      - {f}" for f in sorted(code[stage][0], key=lambda f: (not f.startswith("stages/"), f))]
            continue
        if in_deps and re.match(r"^      - ", line):
            if not line.split("#")[0].strip().removeprefix("- ").endswith(".py"):
                out.append(line)
            continue
        in_deps = False
        out.append(line)
    (REPO / "dvc.yaml").write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()

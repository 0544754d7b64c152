"""Rewrite each stage's code deps in dvc.yaml to its import closure: `python -m tests.sync_deps`.

Data deps, params, outs and comments are kept; only the `.py` entries of each `deps:` list are
replaced, entry point first. tests/test_dependencies.py checks the result.
"""

from __future__ import annotations

import re

from tests.conftest import REPO
from tests.test_dependencies import stage_code


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

"""The README's two set-up commands are the ones users and CI run."""

import re

from tests.conftest import REPO


def setup_commands():
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block and text.index(block.group(0)) < 200, "README must start with the set-up commands"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_starts_with_exactly_two_commands():
    commands = setup_commands()
    assert len(commands) == 2
    assert commands[0].endswith("dvc repro")
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci/run").read_text().splitlines()
    assert setup_commands()[1] in ci


def test_every_param_is_documented():
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    table = (REPO / "docs/parameters.md").read_text()

    def leaves(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict) and value:
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    undocumented = [key for key in leaves(params) if key.rsplit(".", 1)[-1] not in table]
    assert undocumented == [], f"params.yaml keys missing from docs/parameters.md: {undocumented}"


def test_the_readme_map_names_every_module_and_stays_short():
    text = (REPO / "README.md").read_text()
    layout = text[text.index("## Layout") : text.index("## What the pipeline does")]
    modules = sorted(p for p in (REPO / "cxr").rglob("*.py") if p.name != "__init__.py")
    missing = [str(p.relative_to(REPO)) for p in modules if p.name not in layout]
    assert not missing, f"README's Layout map does not name {missing}"
    assert len(text.splitlines()) < 300, "README over 300 lines: move long tables to docs/"

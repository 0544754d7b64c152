"""Stage entry points report a user-fixable failure as one clear line, not a traceback, and say how to
get back what DVC removed before the stage ran."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from cxr.errors import PipelineError


def declared_outputs(name: str, dvc_yaml: Path = Path("dvc.yaml")) -> list[str]:
    """The outs, metrics and plots dvc.yaml declares for stage `name` (empty when unreadable)."""
    try:
        spec = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {}).get(name) or {}
    except (OSError, yaml.YAMLError):
        return []
    entries = [e for key in ("outs", "metrics", "plots") for e in spec.get(key) or []]
    return [next(iter(e)) if isinstance(e, dict) else str(e) for e in entries]


def restore_hint(name: str) -> str | None:
    """Under `dvc repro` / `dvc exp run` (DVC_STAGE set), DVC deletes a stage's outputs before running it,
    so a failed run leaves e.g. no models/model.pt: name what is missing and the command that puts the
    committed version back. None outside DVC or when nothing is missing."""
    if "DVC_STAGE" not in os.environ:
        return None
    missing = [out for out in declared_outputs(name) if not Path(out).exists()]
    if not missing:
        return None
    return (
        f"{name}: the run failed after DVC removed {', '.join(missing)}; `dvc checkout {' '.join(missing)}` "
        "restores the last committed version (after a failed `dvc exp run`: `git checkout params.yaml && dvc "
        "checkout` returns the workspace to the commit)"
    )


def _print_hint(name: str) -> None:
    hint = restore_hint(name)
    if hint:
        print(hint, file=sys.stderr, flush=True)


def stage(name: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    """Run a stage's main(); a PipelineError exits with status 1 and `<name>: <message>`; any failure
    under DVC also prints `restore_hint`."""

    def wrap(main: Callable[[], None]) -> Callable[[], None]:
        @functools.wraps(main)
        def run() -> None:
            try:
                main()
            except PipelineError as exc:
                print(f"{name}: {exc}", file=sys.stderr, flush=True)
                _print_hint(name)
                sys.exit(1)
            except BaseException as exc:
                if not (isinstance(exc, SystemExit) and exc.code in (0, None)):
                    _print_hint(name)
                raise

        return run

    return wrap

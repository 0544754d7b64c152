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
from cxr.lifetime import die_with_launcher


def declared_outputs(name: str, dvc_yaml: Path = Path("dvc.yaml")) -> list[tuple[str, bool]]:
    """The outs, metrics and plots dvc.yaml declares for stage `name`, each with whether DVC caches it
    (`cache: false` ones are committed to git instead); empty when unreadable."""
    try:
        spec = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {}).get(name) or {}
    except (OSError, yaml.YAMLError):
        return []
    entries = [e for key in ("outs", "metrics", "plots") for e in spec.get(key) or []]
    out = []
    for entry in entries:
        if isinstance(entry, dict):
            path, options = next(iter(entry.items()))
            out.append((str(path), (options or {}).get("cache", True) is not False))
        else:
            out.append((str(entry), True))
    return out


def restore_hint(name: str) -> str | None:
    """Under `dvc repro` / `dvc exp run` (DVC_STAGE set), DVC deletes a stage's outputs before running it,
    so a failed run leaves e.g. no models/model.pt: name what is missing and the command that puts the
    committed version back. None outside DVC or when nothing is missing."""
    if "DVC_STAGE" not in os.environ:
        return None
    missing = [(out, cached) for out, cached in declared_outputs(name) if not Path(out).exists()]
    if not missing:
        return None
    cached = [out for out, in_cache in missing if in_cache]
    in_git = [out for out, in_cache in missing if not in_cache]
    commands = ([f"`dvc checkout {' '.join(cached)}`"] if cached else []) + (
        [f"`git checkout -- {' '.join(in_git)}` (cache: false outputs live in git, not the DVC cache)"]
        if in_git
        else []
    )
    return (
        f"{name}: the run failed after DVC removed {', '.join(out for out, _ in missing)}; "
        f"{' and '.join(commands)} restore the last committed version (after a failed `dvc exp run`: "
        "`git checkout params.yaml && dvc checkout` returns the workspace to the commit)"
    )


def _print_hint(name: str) -> None:
    hint = restore_hint(name)
    if hint:
        print(hint, file=sys.stderr, flush=True)


def stage(name: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    """Run a stage's main(); a PipelineError exits with status 1 and `<name>: <message>`; any failure
    under DVC also prints `restore_hint`. Every stage ends when the dvc that started it is killed
    (`cxr.lifetime.die_with_launcher`); its pool workers end with it."""

    def wrap(main: Callable[[], None]) -> Callable[[], None]:
        @functools.wraps(main)
        def run() -> None:
            die_with_launcher()
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

"""Stage entry points report a user-fixable failure as one clear line, not a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

from cxr.errors import PipelineError


def stage(name: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    """Run a stage's main(); a PipelineError exits with status 1 and `<name>: <message>`."""

    def wrap(main: Callable[[], None]) -> Callable[[], None]:
        @functools.wraps(main)
        def run() -> None:
            try:
                main()
            except PipelineError as exc:
                sys.exit(f"{name}: {exc}")

        return run

    return wrap

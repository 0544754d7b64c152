"""Follow `params` through one tiny training run: `python -m scripts.params_walk`.

Every project function called with the Params object, or a part of it (a pydantic model of
cxr.config), as an argument other than `self`, in call order. Prints the files entered and the
climbs back up: calls into a file the walk had already entered and left.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from pydantic import BaseModel

from cxr.config import parse_params
from cxr.data.demo import write_demo_dataset
from tests.conftest import REPO, tiny_params_dict, train_on

CODE = (str(REPO / "cxr"), str(REPO / "stages"))


def _carries_params(frame) -> bool:
    code = frame.f_code
    names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
    args = [frame.f_locals.get(n) for n in names if n != "self"]  # a method of the holder is no step
    return any(isinstance(a, BaseModel) and type(a).__module__ == "cxr.config" for a in args) or any(
        isinstance(getattr(a, "params", None), BaseModel) for a in args
    )


def walk() -> list[str]:
    """The files the params pass through during decode, features and one epoch of training."""
    params = parse_params(tiny_params_dict(epochs=1))
    work = Path(tempfile.mkdtemp())
    write_demo_dataset(work / "raw", params.data, params.seed)
    trail: list[str] = []

    def tracer(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(CODE) and _carries_params(frame):
            rel = str(Path(frame.f_code.co_filename).relative_to(REPO))
            if not trail or trail[-1] != rel:
                trail.append(rel)

    sys.setprofile(tracer)
    try:
        train_on(params, work / "raw", work)
    finally:
        sys.setprofile(None)
    return trail


def main() -> None:
    trail = walk()
    climbs = sum(1 for i, f in enumerate(trail) if f in trail[:i])
    print(f"files entered: {len(set(trail))}; climbs back up: {climbs}")
    print(" -> ".join(trail))


if __name__ == "__main__":
    main()

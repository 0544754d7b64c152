"""Stage `check_params`: params.yaml validated whole. Every other stage lists only the keys it reads, so a
misspelt key (`dvc exp run -S +train.lrr=0.1`) changes no stage's deps and `dvc repro` would call the
pipeline up to date with the typo ignored; this stage depends on the whole file, so any edit reruns it and
an unknown key, a wrong type or a value out of range fails the run, naming the key and the nearest valid one.
It writes nothing: its outcome is the run's exit status."""

from __future__ import annotations

from cxr.config import PARAMS_FILE, load_params
from cxr.stage import stage


@stage("check_params")
def main() -> None:
    params = load_params()
    print(f"check_params: {PARAMS_FILE} is valid (task {params.data.task}, source {params.data.source})")


if __name__ == "__main__":
    main()

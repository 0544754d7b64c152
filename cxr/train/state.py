"""The training state of one run: what it holds between epochs (`Run`), and the file that resumes it
(models/last.pt and its second name), saved and restored by one pair of functions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from cxr.atomic import link_or_copy
from cxr.config import RUNTIME_KEYS, Params
from cxr.errors import PipelineError
from cxr.model.checkpoint import cpu_state, save_payload
from cxr.model.spec import ModelSpec
from cxr.train.loop import Fit


class ResumeError(PipelineError, RuntimeError):
    """models/last.pt does not belong to the run being resumed."""


@dataclass
class Run:
    """Everything one training run holds between epochs."""

    params: Params
    spec: ModelSpec
    model: torch.nn.Module
    fit: Fit
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    data: dict[str, tuple]  # split -> (inputs, labels)
    trainable: int
    best_weights: dict | None = None  # CPU copy of the best epoch's weights, kept in the training state
    curves: dict[str, str] | None = None  # a resumed state's curve files (None: a state from before they were kept)
    environment: dict | None = None  # threads, torch, CPU, device (cxr.model.inference.pin_compute)
    start: dict | None = None  # the weights file it started from and its sha256 (cxr.model.spec.starting_point)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.fit.optimizer

    @property
    def scaler(self) -> torch.amp.GradScaler:
        return self.fit.scaler

    def say(self, message: str) -> None:
        if self.fit.dist.is_main:
            tqdm.write(message)  # above a progress bar, on a terminal


STATE_KEYS = frozenset({"model", "optimizer", "scheduler", "epoch", "best", "signature", "torch_rng", "batch_rng"})


def run_signature(params: Params, classes: tuple[str, ...]) -> dict:
    """What must match for a resumed run to continue the interrupted one."""
    train = params.train.model_dump(exclude={k.split(".", 1)[1] for k in RUNTIME_KEYS})
    return {"seed": params.seed, "task": params.data.task, "classes": list(classes), "train": train}


def save_training_state(
    path: Path | str, run: Run, epoch: int, best: dict, signature: dict, curves: dict[str, str] | None = None
) -> None:
    """Everything `restore_training_state` needs to continue after `epoch` finished epochs, then a
    second name for it (`shadow_of`)."""
    save_payload(
        path,
        {
            "model": cpu_state(run.model),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict(),
            "average": run.fit.average.state_dict(),
            "epoch": epoch,  # epochs finished; also the next dvclive step
            "best": best,
            "best_model": run.best_weights,  # what models/model.pt holds, in case DVC removed it
            "curves": curves or {},  # the run's curve files up to `epoch` (cxr/train/log.py read_curves)
            "signature": signature,
            "torch_rng": torch.get_rng_state(),
            "batch_rng": run.generator.get_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
    )
    link_or_copy(path, shadow_of(path))


def shadow_of(path: Path | str) -> Path:
    """A second name for the training state (a hard link, git-ignored, not a DVC output): when
    `dvc exp run` checks out the committed last.pt over an interrupted one, it still holds the
    interrupted run's state."""
    path = Path(path)
    return path.with_name(f".{path.stem}.resume{path.suffix}")


def _differences(old: dict, new: dict) -> list[str]:
    """The params in which two run signatures differ, as `key old -> new`."""
    old = old if isinstance(old, dict) else {}
    pairs = [(f"train.{k}", (old.get("train") or {}).get(k), v) for k, v in new["train"].items()]
    pairs += [(k, old.get(k), new[k]) for k in ("seed", "task", "classes")]
    found = sorted(f"{key} {before!r} -> {after!r}" for key, before, after in pairs if before != after)
    if old.get("data") != new.get("data"):
        found.append("the training data (data/decoded holds other images or labels)")
    return found


def _read_state(path: Path) -> tuple[dict | None, str]:
    """A training state file and "", or None and why it cannot be one (empty, truncated, text, foreign)."""
    if path.stat().st_size == 0:
        return None, f"{path} is empty"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - empty, text, truncated or foreign files all end here
        return None, f"{path} is not a training state ({type(exc).__name__}: {str(exc)[:80]})"
    missing = sorted(STATE_KEYS - set(state)) if isinstance(state, dict) else ["everything"]
    if missing:
        return None, f"{path} is not a training state this pipeline wrote (no {', '.join(missing)})"
    return state, ""


def newest_state(path: Path | str, signature: dict) -> tuple[Path, dict]:
    """The training state to resume: of `path` and its shadow, the one written by a run with these
    params (`signature`) that got furthest. Refuses, naming each state and the params that differ
    (or why it is not a training state at all), when neither was."""
    found, unusable = [], []
    for candidate in (Path(path), shadow_of(path)):
        if candidate.is_file():
            state, why = _read_state(candidate)
            if state is None:
                unusable.append(why)
            else:
                found.append((candidate, state))
    matching = [(p, s) for p, s in found if s["signature"] == signature]
    if matching:
        return max(matching, key=lambda ps: ps[1]["epoch"])
    seen = [
        f"{p} (after epoch {s['epoch']}) differs in {', '.join(_differences(s['signature'], signature))}"
        for p, s in found
    ]
    raise ResumeError(
        f"train.resume: no training state was written by a run with these params: {'; '.join(seen + unusable)}; "
        f"set train.resume: false to start afresh (or delete {Path(path)} and {shadow_of(path)}), "
        "or restore the params of the interrupted run"
    )


def restore_training_state(path: Path | str, run: Run, signature: dict) -> tuple[int, dict]:
    """Load the state `save_training_state` wrote (or its shadow, whichever got further under these
    params) into `run`; return (finished epochs, best scores). Refuses a state written under other
    params (`signature`), naming the keys that differ.
    """
    path, state = newest_state(path, signature)
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    run.fit.average.load_state_dict(state.get("average", {}))
    run.best_weights = state.get("best_model")
    run.curves = state.get("curves")
    torch.set_rng_state(state["torch_rng"])
    run.generator.set_state(state["batch_rng"])
    if state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["epoch"], state["best"]

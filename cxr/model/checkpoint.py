"""Files a run writes: the model checkpoint (weights + spec) and the training state that resumes it."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from cxr.atomic import atomic_path, link_or_copy
from cxr.errors import PipelineError
from cxr.model.spec import ModelSpec

FORMAT_VERSION = 3


class CheckpointError(PipelineError, FileNotFoundError):
    """The checkpoint is missing or was written by an incompatible version."""


class ResumeError(PipelineError, RuntimeError):
    """models/last.pt does not belong to the run being resumed."""


def _cpu_state(model: nn.Module | dict) -> dict[str, torch.Tensor]:
    state = model if isinstance(model, dict) else model.state_dict()
    return {k: v.detach().cpu() for k, v in state.items()}


def _save(path: Path | str, payload: dict) -> None:
    # saving through a file object keeps the random temp name out of the zip records,
    # so identical weights give an identical file (and an unchanged dvc.lock hash)
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        torch.save(payload, f)


def save_checkpoint(path: Path | str, model: nn.Module | dict, spec: ModelSpec, **extra) -> None:
    """Write weights (a model or its state dict; on the CPU) and spec atomically: a crash leaves the
    previous file intact."""
    _save(path, {"format": FORMAT_VERSION, "spec": asdict(spec), "model": _cpu_state(model), **extra})


def load_checkpoint(path: Path | str) -> tuple[nn.Module, ModelSpec, dict]:
    """Rebuild the model from a checkpoint; return (model in eval mode, spec, whole payload)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; run `dvc repro train` first")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - empty, text, truncated or foreign files all end here
        raise CheckpointError(f"{path}: not a checkpoint this pipeline wrote ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: checkpoint format {found!r}, expected {FORMAT_VERSION}")
    try:
        spec = ModelSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in payload["spec"].items()})
        model = spec.build()
        model.load_state_dict(payload["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path}: its spec and weights do not make a model ({type(exc).__name__}: {exc})"
        ) from None
    model.eval()
    return model, spec, payload


def save_training_state(path: Path | str, run, epoch: int, best: dict, signature: dict) -> None:
    """Everything `restore_training_state` needs to continue after `epoch` finished epochs.

    `run` has the model, optimizer, scheduler, scaler and batch-order generator of the run.
    """
    _save(
        path,
        {
            "model": _cpu_state(run.model),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict(),
            "average": run.fit.average.state_dict(),
            "epoch": epoch,  # epochs finished; also the next dvclive step
            "best": best,
            "best_model": run.best_weights,  # what models/model.pt holds, in case DVC removed it
            "signature": signature,
            "torch_rng": torch.get_rng_state(),
            "batch_rng": run.generator.get_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
    )


def shadow_of(path: Path | str) -> Path:
    """A second name for the training state (a hard link, git-ignored, not a DVC output): when
    `dvc exp run` checks out the committed last.pt over an interrupted one, it still holds the
    interrupted run's state."""
    path = Path(path)
    return path.with_name(f".{path.stem}.resume{path.suffix}")


def link_shadow(path: Path | str) -> None:
    link_or_copy(path, shadow_of(path))


def _differences(old: dict, new: dict) -> list[str]:
    """The params in which two run signatures differ, as `key old -> new`."""
    pairs = [(f"train.{k}", old["train"].get(k), v) for k, v in new["train"].items()]
    pairs += [(k, old[k], new[k]) for k in ("seed", "task", "classes")]
    return sorted(f"{key} {before!r} -> {after!r}" for key, before, after in pairs if before != after)


def newest_state(path: Path | str, signature: dict) -> tuple[Path, dict]:
    """The training state to resume: of `path` and its shadow, the one written by a run with these
    params (`signature`) that got furthest. Refuses, naming each state and the params that differ,
    when neither was."""
    found = []
    for candidate in (Path(path), shadow_of(path)):
        if candidate.is_file():
            found.append((candidate, torch.load(candidate, map_location="cpu", weights_only=True)))
    matching = [(p, s) for p, s in found if s["signature"] == signature]
    if matching:
        return max(matching, key=lambda ps: ps[1]["epoch"])
    seen = "; ".join(
        f"{p} (after epoch {s['epoch']}) differs in {', '.join(_differences(s['signature'], signature))}"
        for p, s in found
    )
    raise ResumeError(
        f"train.resume: no training state was written by a run with these params: {seen}; "
        "set train.resume: false to start afresh, or restore the params of the interrupted run"
    )


def restore_training_state(path: Path | str, run, signature: dict) -> tuple[int, dict]:
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
    torch.set_rng_state(state["torch_rng"])
    run.generator.set_state(state["batch_rng"])
    if state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["epoch"], state["best"]

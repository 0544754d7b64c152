"""Optimizers and learning-rate schedules by their params name: small tables, not if-chains."""

from __future__ import annotations

import inspect
from collections.abc import Iterable

import torch

from cxr.config import ScheduleConfig, TrainConfig
from cxr.errors import ConfigError

# name -> (optimizer class, its settings from the train params)
OPTIMIZERS = {
    "sgd": (torch.optim.SGD, lambda c: dict(momentum=c.momentum, nesterov=c.nesterov, weight_decay=c.weight_decay)),
    "adam": (torch.optim.Adam, lambda c: {"weight_decay": c.weight_decay}),
    "adamw": (torch.optim.AdamW, lambda c: {"weight_decay": c.weight_decay}),
}


def fused_where_possible(optimizer: type[torch.optim.Optimizer], params: list[torch.nn.Parameter]) -> dict:
    """`fused=True` (one kernel for the whole update) where every parameter is on a CUDA device and
    this torch's optimizer has it; nothing on the CPU, where the result must stay as it was."""
    has_fused = "fused" in inspect.signature(optimizer).parameters
    on_cuda = bool(params) and all(p.is_cuda for p in params)
    return {"fused": True} if has_fused and on_cuda else {}


# Schedules step once per epoch. `step` multiplies the lr by `factor` at each milestone epoch,
# so factor 10 with milestones [3] expresses "1e-4, then 1e-3 from epoch 4 on".
SCHEDULES = {
    "constant": lambda opt, s, epochs: torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0),
    "step": lambda opt, s, epochs: torch.optim.lr_scheduler.MultiStepLR(opt, s.milestones, gamma=s.factor),
    "cosine": lambda opt, s, epochs: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs),
}


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    params = list(params)
    kind, settings = OPTIMIZERS[cfg.optimizer]
    return kind(params, lr=cfg.lr, **settings(cfg), **fused_where_possible(kind, params))


def make_schedule(optimizer: torch.optim.Optimizer, schedule: ScheduleConfig, epochs: int):
    """The named schedule, after `schedule.warmup` epochs of linear warm-up when asked.

    Warm-up starts at lr / (warmup + 1) and reaches lr at epoch warmup + 1; the schedule then runs
    over the remaining epochs (cosine reaches 0 at the last one; step milestones stay absolute epochs).
    """
    w = schedule.warmup
    if w == 0:
        return SCHEDULES[schedule.name](optimizer, schedule, epochs)
    if w >= epochs:
        raise ConfigError(f"train.schedule.warmup: {w} epochs of warm-up leave none of train.epochs={epochs}")
    after = schedule.model_copy(update={"milestones": [m - w for m in schedule.milestones if m > w]})
    warm = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / (w + 1), total_iters=w)
    main = SCHEDULES[schedule.name](optimizer, after, epochs - w)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warm, main], milestones=[w])

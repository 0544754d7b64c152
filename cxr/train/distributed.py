"""Training in several processes under torchrun: DistributedDataParallel over NCCL (one process
per GPU) or gloo (CPU). Each global batch of `train.batch_size` images is split between the
processes, so the batches, and up to float rounding and per-process BatchNorm statistics the
result, are those of a single process."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from cxr.errors import ConfigError
from cxr.lifetime import child_dies_with_this_process


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Distributed:
        """The process's place as torchrun describes it (RANK, WORLD_SIZE, LOCAL_RANK); one process otherwise."""
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self) -> torch.device:
        if torch.cuda.is_available():
            if self.local_rank >= torch.cuda.device_count():
                raise ConfigError(
                    f"train.nproc: process {self.local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                    "use at most one process per GPU"
                )
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def start(self, device: torch.device) -> None:
        if self.active and not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def stop(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    def share(self, idx: torch.Tensor) -> torch.Tensor:
        """This process's part of a batch (every world-th index, from its rank on)."""
        return idx[self.rank :: self.world]

    def gather(self, obj) -> list:
        """`obj` from every process, in rank order (on every process)."""
        if not self.active:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def wrap(self, model: nn.Module) -> nn.Module:
        if not self.active:
            return model
        device = next(model.parameters()).device
        return nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    def gather_rows(self, part: torch.Tensor, n: int) -> torch.Tensor:
        """Reassemble rows computed for `share(arange(n))` by each process into all n rows, in order."""
        if not self.active:
            return part
        full = torch.empty((n, *part.shape[1:]), dtype=part.dtype)
        for rank, rows in enumerate(self.gather(part)):
            full[torch.arange(n)[rank :: self.world]] = rows
        return full

    def concat_arrays(self, *arrays: np.ndarray) -> list[np.ndarray]:
        """Each array concatenated over processes, in rank order."""
        parts = self.gather(arrays)
        return [np.concatenate([p[i] for p in parts]) for i in range(len(arrays))]


class Rows:
    """A view of some rows of an indexable input (the image store or a feature tensor)."""

    def __init__(self, inputs, rows: torch.Tensor):
        self.inputs, self.rows = inputs, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx):
        return self.inputs[self.rows[idx]]


def relaunch(nproc: int, module: str) -> int:
    """Run `python -m module` in `nproc` processes on this machine with torchrun; its exit status."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", module]
    print(f"{module}: train.nproc is {nproc}: {' '.join(cmd[1:])}", flush=True)
    return subprocess.run(cmd, check=False, preexec_fn=child_dies_with_this_process()).returncode  # noqa: PLW1509

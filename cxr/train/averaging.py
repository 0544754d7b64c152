"""`train.ema`: an exponential moving average of the trained weights, which validation scores and
the checkpoint keeps. An object that does nothing when the decay is 0, so the loop has no branches."""

from __future__ import annotations

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightAverage:
    """EMA of `net`'s parameters and buffers (BatchNorm statistics too), updated after every step."""

    def __init__(self, net: nn.Module, decay: float):
        self.average = (
            AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True) if decay > 0 else None
        )

    @classmethod
    def off(cls) -> WeightAverage:
        """No average: `module` returns the trained network itself."""
        return cls(nn.Identity(), 0.0)

    def update(self, net: nn.Module) -> None:
        if self.average is not None:
            self.average.update_parameters(net)

    def module(self, net: nn.Module) -> nn.Module:
        """The network to validate and save: the average when on, else `net` itself."""
        return self.average.module if self.average is not None else net

    def state_dict(self) -> dict:
        return self.average.state_dict() if self.average is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.average is not None and state:
            self.average.load_state_dict(state)

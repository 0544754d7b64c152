"""cxr/train/loop.py: the step never waits for the device, a non-finite loss is found within
`check_every` batches and named by its batch with the last good state restored, and the compiled
whole step (normalisation, network, loss) follows the eager one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cxr.model.inference import Runtime
from cxr.model.losses import make_loss
from cxr.train.loop import Fit, NonFiniteLossError, _step, train_epoch

CPU = Runtime(torch.device("cpu"), None, channels_last=False)


def _fit(model: nn.Module, loss_fn, **options) -> Fit:
    return Fit(
        net=model,
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        loss_fn=loss_fn,
        decide=lambda logits: logits.argmax(1),
        runtime=CPU,
        prepare=CPU.to_device,
        prepare_eval=CPU.to_device,
        scaler=CPU.grad_scaler(),
        **options,
    )


def test_a_non_finite_loss_at_batch_k_is_named_and_the_last_good_state_restored():
    torch.manual_seed(0)
    model = nn.Linear(6, 2)
    ce, calls = make_loss("ce", 2), {"n": 0}

    def poisoned(logits, y):  # the loss of batch 6 is NaN; later ones are whatever NaN weights give
        calls["n"] += 1
        loss = ce(logits, y)
        return loss * float("nan") if calls["n"] == 6 else loss

    fit = _fit(model, poisoned, check_every=4)
    after_step = []  # weights and momentum after each optimizer step
    fit.optimizer.register_step_post_hook(
        lambda opt, args, kwargs: after_step.append(
            ({k: v.clone() for k, v in model.state_dict().items()},
             [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()])
        )
    )  # fmt: skip
    inputs, labels = torch.randn(40, 6), torch.randint(0, 2, (40,))
    named = r"loss is nan at epoch 3, batch 6/10 \(lr 0.1\).*after batch 4 restored"
    with pytest.raises(NonFiniteLossError, match=named):
        train_epoch(fit, inputs, labels, 4, torch.Generator().manual_seed(0), epoch=3)
    assert len(after_step) == 8  # the loop ran on to the look after batch 8 without waiting
    weights, momentum = after_step[3]  # the state of the last good look, after batch 4
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    buffers = [fit.optimizer.state[p]["momentum_buffer"] for p in model.parameters()]
    assert all(torch.equal(b, m) for b, m in zip(buffers, momentum, strict=True))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_non_finite_loss_in_the_last_batches_is_found_at_the_epochs_end():
    torch.manual_seed(0)
    model = nn.Linear(6, 2)
    ce, calls = make_loss("ce", 2), {"n": 0}

    def last_is_inf(logits, y):
        calls["n"] += 1
        return ce(logits, y) * (float("inf") if calls["n"] == 10 else 1.0)

    fit = _fit(model, last_is_inf, check_every=25)
    with pytest.raises(NonFiniteLossError, match=r"loss is inf at epoch 1, batch 10/10 .*after batch 0 restored"):
        train_epoch(fit, torch.randn(40, 6), torch.randint(0, 2, (40,)), 4, torch.Generator().manual_seed(0))


@pytest.mark.slow
@pytest.mark.parametrize("mode", [True, "reduce-overhead"])
def test_the_compiled_step_follows_the_eager_one_for_five_steps(mode):
    """train.compile: uint8 -> float, normalisation, network and loss compiled as one graph (inductor on the CPU;
    "reduce-overhead" replays it as CUDA graphs on a GPU, and its outputs are copies a later step cannot overwrite)."""
    images = torch.randint(0, 256, (5, 8, 1, 16, 16), dtype=torch.uint8)
    labels = torch.randint(0, 2, (5, 8))
    curves = {}
    for compiled in (False, mode):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(4, 2))  # fmt: skip
        fit = _fit(net, make_loss("ce", 2), normalise=CPU.normalise, compile=compiled)
        net.train()
        curves[compiled] = [float(_step(fit, images[i], labels[i])[0].detach()) for i in range(5)]
    assert curves[mode] == pytest.approx(curves[False], rel=1e-4, abs=1e-5)
    assert len(set(curves[False])) == 5  # the weights moved: five different losses

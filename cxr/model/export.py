"""The trained model for use outside this pipeline: a torch.export program (`model.pt2`, loaded with
`torch.export.load(path).module()`; TorchScript, deprecated in torch 2.14, is no longer written) and an
ONNX file, both taking the decoded pixels and returning logits, each checked against the checkpoint on
real images before it is kept.

Input: float32 (N, 1, S, S) grayscale pixel values 0..255, the image resized as the spec's
`preprocessing` says (the decoded store's pixels); the exported graph scales, repeats the channel
and standardises as training did, so users need no ImageNet constants. Output: logits (N, classes);
`spec.loss` says softmax (ce) or one sigmoid per class (bce, focal).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxr.atomic import atomic_path
from cxr.errors import PipelineError
from cxr.model.spec import ModelSpec

MAX_ABS_DIFF = 1e-4  # largest logit difference from the checkpoint an exported file may show, per unit of the
# largest |logit| above 1 (float32 rounding grows with the logits: a diverged model's 1e10 logits differ by 1e5)
INPUT, OUTPUT = "pixels", "logits"


class ExportError(PipelineError, RuntimeError):
    """An exported model disagrees with its checkpoint."""


class Exported(nn.Module):
    """pixels (N, 1, S, S) in 0..255 -> logits: the checkpoint's network with its input pipeline."""

    def __init__(self, model: nn.Module, spec: ModelSpec):
        super().__init__()
        self.model = model.eval()
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels / 255.0).expand(-1, self.mean.shape[1], -1, -1)
        return self.model((x - self.mean) / self.std)


def export_program(wrapped: Exported, example: torch.Tensor, path: Path) -> torch.export.ExportedProgram:
    """torch.export's program of the wrapped network (batch size left free), saved to `path` (.pt2); the
    ONNX exporter starts from the same program."""
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad(), atomic_path(path) as tmp:
        program = torch.export.export(wrapped, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(tmp))
    return program


def export_onnx(program: torch.export.ExportedProgram, path: Path, metadata: dict[str, str] | None = None) -> None:
    """ONNX from torch.export's program (the dynamo exporter), batch size left free, weights inside the file;
    `metadata` becomes the model's metadata_props (what a runtime needs to use it: `onnx_metadata`)."""
    with torch.no_grad(), atomic_path(path) as tmp:
        onnx_program = torch.onnx.export(
            program, input_names=[INPUT], output_names=[OUTPUT], dynamo=True, external_data=False, verbose=False
        )
        onnx_program.save(str(tmp), external_data=False)
        if metadata:
            import onnx  # only the export stage needs it

            proto = onnx.load(str(tmp))
            onnx.helper.set_model_props(proto, metadata)
            onnx.save(proto, str(tmp))


def parity(wrapped: Exported, pixels: torch.Tensor, pt2: Path, onnx: Path, batch: int = 64) -> dict[str, float]:
    """Max abs logit difference of each exported file, loaded back from disk, from the checkpoint over `pixels`,
    and the checkpoint's largest |logit| (the scale of float32 rounding)."""
    import onnxruntime  # the reference ONNX runtime; only the export stage needs it

    session = onnxruntime.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    loaded = torch.export.load(str(pt2)).module()
    worst = {"pt2_max_abs_diff": 0.0, "onnx_max_abs_diff": 0.0, "max_abs_logit": 0.0}
    with torch.no_grad():
        for start in range(0, len(pixels), batch):
            x = pixels[start : start + batch].float()
            ref = wrapped(x).numpy()
            worst["max_abs_logit"] = max(worst["max_abs_logit"], float(np.abs(ref).max()))
            got = {
                "pt2_max_abs_diff": loaded(x).numpy(),
                "onnx_max_abs_diff": session.run([OUTPUT], {INPUT: x.numpy()})[0],
            }
            for key, logits in got.items():
                worst[key] = max(worst[key], float(np.abs(logits - ref).max()))
    return worst


def onnx_metadata(spec: ModelSpec, model_sha256: str, decisions: dict | None) -> dict[str, str]:
    """What the ONNX file says about itself (metadata_props, strings): class order, task, input size,
    channels and normalisation, the input recipe, the checkpoint's sha256, and evaluate's thresholds and
    abstention rule when `decisions` (metrics/test.json written for this model) is given."""
    meta = {
        "classes": json.dumps(list(spec.classes)),
        "task": spec.task,
        "input": f"float32 (N, 1, {spec.image_size}, {spec.image_size}): gray pixel values 0..255",
        "image_size": str(spec.image_size),
        "channels": "1",
        "mean": json.dumps(list(spec.mean)),
        "std": json.dumps(list(spec.std)),
        "preprocessing": spec.preprocessing,
        "output": "logits; " + ("softmax" if spec.loss == "ce" else "sigmoid") + " gives the probabilities",
        "checkpoint_sha256": model_sha256,
    }
    if decisions:
        thresholds = {c: r.get("threshold") for c, r in decisions.get("screening", {}).items()}
        meta["thresholds"] = json.dumps(thresholds)
        meta["abstention"] = json.dumps(decisions.get("abstention", {}).get("coverage"))
    return meta


def export(model: nn.Module, spec: ModelSpec, pixels: torch.Tensor, out_dir: Path, metadata=None) -> dict:
    """Write `out_dir/model.pt2` and `out_dir/model.onnx` (with `metadata`, see onnx_metadata),
    check both against the checkpoint on `pixels` (uint8 (N, 1, S, S)) and return the differences;
    refuse above MAX_ABS_DIFF."""
    if len(pixels) == 0:
        raise ExportError("export: the test split has no images to check the exported files on")
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapped = Exported(model, spec).eval()
    example = pixels[[0, -1]].float()  # two rows, so the exporter keeps the batch size free
    paths = {"pt2": out_dir / "model.pt2", "onnx": out_dir / "model.onnx"}
    program = export_program(wrapped, example, paths["pt2"])
    export_onnx(program, paths["onnx"], metadata)
    diffs = parity(wrapped, pixels, paths["pt2"], paths["onnx"])
    limit = MAX_ABS_DIFF * max(1.0, diffs["max_abs_logit"])
    bad = {k: v for k, v in diffs.items() if k.endswith("_diff") and not v <= limit}
    if bad:
        for path in paths.values():
            path.unlink(missing_ok=True)
        raise ExportError(
            f"export: exported logits differ from the checkpoint's by {bad} (limit {MAX_ABS_DIFF} x the largest "
            f"|logit| above 1, {diffs['max_abs_logit']:.3g})"
        )
    return {"images": len(pixels), "max_abs_diff_limit": MAX_ABS_DIFF, **diffs}

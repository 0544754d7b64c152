"""Stage `decode`: decode and resize every image of data/raw once, into data/decoded."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from cxr.config import Params, load_params
from cxr.data.decoding import Decoder, build_store
from cxr.data.radiograph import InputRecipe
from cxr.data.splits import DatasetError, excluded_files, split_classes
from cxr.errors import ConfigError
from cxr.paths import DATA_METRICS, DECODED_DIR, RAW_DIR
from cxr.stage import stage


def decode(params: Params, raw_dir: Path = RAW_DIR, out_dir: Path = DECODED_DIR, data_metrics=DATA_METRICS) -> None:
    """Decode every split of `raw_dir` at train.image_size into the store at `out_dir`."""
    start = time.perf_counter()
    how = decoder(params.decode.device)
    multilabel = params.data.task == "multilabel"
    classes = split_classes(Path(raw_dir) / "train")
    if params.data.task == "binary" and len(classes) != 2:
        raise DatasetError(
            f"data.task is binary but {raw_dir}/train has {len(classes)} classes {list(classes)}; "
            "set data.task: multiclass (or multilabel), or keep two class folders"
        )
    skip = excluded_files(data_metrics, raw_dir)
    recipe = InputRecipe.from_params(params.train.input)
    counts = build_store(
        raw_dir, out_dir, params.train.image_size, multilabel, skip, recipe, params.verify.max_pixels,
        how,
    )  # fmt: skip
    total = sum(counts.values())
    print(
        f"decode: {total} images ({', '.join(f'{k} {v}' for k, v in counts.items())}) at "
        f"{params.train.image_size} px ({recipe.name}, JPEG on {params.decode.device}) -> {out_dir}/ in "
        f"{time.perf_counter() - start:.1f} s"
    )


def decoder(device: str) -> Decoder:
    """decode.device as a Decoder; cuda without a CUDA device is refused by name."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "decode.device is 'cuda' but torch finds no CUDA device here; set decode.device: cpu "
            "(or run decode on a machine with a GPU)"
        )
    return Decoder(device=torch.device(device) if device == "cuda" else None)


@stage("decode")
def main() -> None:
    decode(load_params())


if __name__ == "__main__":
    main()

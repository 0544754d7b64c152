"""Stage `features`: run a frozen backbone once over train and val, into data/features."""

from __future__ import annotations

import time
from pathlib import Path

from cxr.config import Params, load_params
from cxr.data.store import SplitStore
from cxr.model.inference import Runtime
from cxr.model.spec import initial_model
from cxr.paths import DECODED_DIR, FEATURES_DIR
from cxr.stage import stage
from cxr.train.features import CACHED_SPLITS, EXTRACT_BATCH, cache_applies, write_features, write_not_applicable


def cache_features(params: Params, store_dir: Path = DECODED_DIR, out_dir: Path = FEATURES_DIR) -> None:
    """Write the backbone's features of train and val to `out_dir`, or why none apply."""
    cfg = params.train
    applies, why = cache_applies(cfg)
    if not applies:
        write_not_applicable(out_dir, why)
        print(f"features: nothing to cache ({why}); train runs the whole model")
        return
    start = time.perf_counter()
    stores = {name: SplitStore(store_dir, name, cfg.image_size) for name in CACHED_SPLITS}
    model, _, _ = initial_model(params, stores["train"].classes)
    runtime = Runtime.select(cfg.precision)
    runtime.prepare_model(model)
    describe = {"arch": cfg.arch, "weights": cfg.weights, "image_size": cfg.image_size}
    shapes = write_features(out_dir, model, stores, EXTRACT_BATCH, runtime, describe)
    print(
        f"features: {cfg.arch} backbone ran once over "
        + ", ".join(f"{name} {n} x {d}" for name, (n, d) in shapes.items())
        + f" on {runtime.device} in {time.perf_counter() - start:.1f} s -> {out_dir}/"
    )


@stage("features")
def main() -> None:
    cache_features(load_params())


if __name__ == "__main__":
    main()

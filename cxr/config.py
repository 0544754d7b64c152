"""Typed, validated view of params.yaml: the one place parameters are read."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from cxr.errors import ConfigError

PARAMS_FILE = Path("params.yaml")

# Names of the dataset presets in cxr/data/presets.py (tests/test_config.py keeps them equal).
PRESET_NAMES = ("covid-binary", "covid-3class")

# The architectures of cxr/model/architectures.py (tests/test_config.py keeps them equal).
ARCHS = (
    "resnet18",
    "resnet50",
    "vgg16",
    "densenet121",
    "efficientnet_b0",
    "efficientnet_v2_s",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "regnet_y_400mf",
    "convnext_tiny",
    "vit_b_16",
    "swin_t",
)
# torchxrayvision's chest X-ray weights (train.weights: txrv:<name>, cxr/model/xray_weights.py): the torchvision
# network each fits and the image side it was trained at (tests/model/test_xray_weights.py keeps the names equal to
# the package's table).
XRV_PREFIX = "txrv:"
XRV_WEIGHTS = {
    "densenet121-res224-all": ("densenet121", 224),
    "densenet121-res224-nih": ("densenet121", 224),
    "densenet121-res224-pc": ("densenet121", 224),
    "densenet121-res224-chex": ("densenet121", 224),
    "densenet121-res224-rsna": ("densenet121", 224),
    "densenet121-res224-mimic_nb": ("densenet121", 224),
    "densenet121-res224-mimic_ch": ("densenet121", 224),
    "resnet50-res512-all": ("resnet50", 512),
}
# Keys that change how a run executes, never its results: not params deps of any stage in dvc.yaml
# (changing one reruns nothing; tests/test_dependencies.py checks it) nor part of a resumed run's signature.
RUNTIME_KEYS = (
    "train.compile",
    "train.finite_check_every",
    "train.low_memory",
    "train.nproc",
    "train.resume",
    "pretrain.resume",
)
PRETRAINED = "pretrained"  # train.weights: the backbone stage pretrain wrote (models/pretrained.pt)

# Radiograph-aware input steps (cxr/data/radiograph.py), each a choice of train.input.
BORDERS = ("keep", "crop")
INTENSITIES = ("none", "window", "equalize", "clahe")
ASPECTS = ("squash", "pad", "crop")

LAYOUT_TASKS = {"nih-cxr14": ("multilabel",), "chexpert": ("multilabel",), "rsna-pneumonia": ("binary", "multiclass"),
                "covidx": ("binary", "multiclass")}  # fmt: skip
LAYOUT_LABELS = {
    "nih-cxr14": "any of 14 findings, or none",
    "chexpert": "any of 14 observations, some uncertain",
    "rsna-pneumonia": "pneumonia/normal, or three detailed classes",
    "covidx": "covid against non-covid, or covid/pneumonia/normal",
}
TASK_CLASSES = {
    "binary": ("infected", "normal"),
    "multiclass": ("covid", "pneumonia", "normal"),
    "multilabel": ("covid", "pneumonia", "normal"),
}


class _Yaml12FloatLoader(yaml.SafeLoader):
    """SafeLoader that reads `1e-4` as a float, as YAML 1.2 and DVC's `-S` do (PyYAML: a string)."""


_Yaml12FloatLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?(?:[eE][-+]?\d+)$|^[-+]?\d[\d_]*\.\d*$|^[-+]?\.\d+$"),
    list("-+0123456789."),
)


SENSITIVITY_RULE = re.compile(r"^sensitivity:(0?\.\d+|1(\.0*)?)$")


def parse_threshold_rule(rule: float | str) -> tuple[str, float | None]:
    """`evaluate.threshold` as (kind, value): ("fixed", p), ("youden", None) or ("sensitivity", s)."""
    if isinstance(rule, float | int) and not isinstance(rule, bool):
        if not 0.0 < float(rule) < 1.0:
            raise ValueError(f"a fixed threshold must lie between 0 and 1, got {rule}")
        return "fixed", float(rule)
    if rule == "youden":
        return "youden", None
    if isinstance(rule, str) and SENSITIVITY_RULE.match(rule):
        return "sensitivity", float(rule.split(":", 1)[1])
    raise ValueError(f"{rule!r}: use a probability such as 0.5, 'youden' or 'sensitivity:0.95'")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


PositiveInt = Annotated[int, Field(gt=0)]
UnitFloat = Annotated[float, Field(ge=0.0, le=1.0)]


class DemoConfig(_Section):
    image_size: Annotated[int, Field(ge=32, le=4096)]
    train_per_class: PositiveInt
    val_per_class: PositiveInt
    test_per_class: PositiveInt
    difficulty: UnitFloat


class SplitConfig(_Section):
    val: Annotated[float, Field(ge=0.0, lt=1.0)]
    test: Annotated[float, Field(ge=0.0, lt=1.0)]

    @model_validator(mode="after")
    def _leaves_training_data(self):
        if self.val + self.test >= 1.0:
            raise ValueError(f"val + test = {self.val + self.test:g} leaves nothing to train on; keep it below 1")
        return self


class DataConfig(_Section):
    source: Literal["demo", "url", "folder", "gdrive"]
    preset: str
    gdrive_id: str
    url: str
    sha256: Annotated[str, Field(pattern=r"^([0-9a-f]{64})?$")]
    folder: str
    layout: Literal["auto", "nih-cxr14", "chexpert", "rsna-pneumonia", "covidx"]
    uncertain: Literal["u-ones", "u-zeros", "ignore"]
    frontal_only: bool
    max_extracted_bytes: Annotated[int, Field(ge=1)]
    max_members: Annotated[int, Field(ge=1)]
    split: SplitConfig
    task: Literal["binary", "multiclass", "multilabel"]
    folds: Annotated[int, Field(ge=0, le=50)] | Literal["source"]
    label_fraction: Annotated[float, Field(gt=0.0, le=1.0)]
    demo: DemoConfig

    @field_validator("folds")
    @classmethod
    def _enough_folds(cls, value: int | str) -> int | str:
        if value in (1, 2):
            raise ValueError(
                "k-fold cross-validation needs k >= 3 (a test fold, a validation fold, training folds); 0 = off"
            )
        return value

    @model_validator(mode="after")
    def _source_settings(self):
        archive_path = urlparse(self.url).path.lower()
        if self.source == "url" and not (
            self.url.startswith(("http://", "https://")) and archive_path.endswith((".zip", ".tar", ".tar.gz", ".tgz"))
        ):
            raise ValueError(
                "source 'url' needs data.url to be an http(s) address of a .zip/.tar/.tar.gz/.tgz file, "
                f"got {self.url!r}"
            )
        if self.preset and self.preset not in PRESET_NAMES:
            raise ValueError(f"preset {self.preset!r} is not known; allowed values are {', '.join(PRESET_NAMES)} or ''")
        if self.source == "gdrive" and not (self.gdrive_id or self.preset):
            raise ValueError("source 'gdrive' needs data.gdrive_id (a Google Drive file id) or data.preset")
        if self.source == "folder" and not self.folder:
            raise ValueError("source 'folder' needs data.folder: a folder holding {train,val,test}/{class}/images")
        if self.layout != "auto" and self.source != "folder":
            raise ValueError(f"layout {self.layout!r} reads the collection from a folder: set data.source: folder")
        tasks = LAYOUT_TASKS.get(self.layout)
        if tasks and self.task not in tasks:
            raise ValueError(
                f"layout {self.layout!r} is read as data.task {' or '.join(tasks)} (its labels: "
                f"{LAYOUT_LABELS[self.layout]}); got task {self.task!r}"
            )
        return self


class VerifyConfig(_Section):
    min_per_class: PositiveInt
    max_leaks: Annotated[int, Field(ge=0)]
    max_pixels: Annotated[int, Field(ge=1024)]
    near_duplicate_bits: Annotated[int, Field(ge=0, le=64)]
    expected: dict[Literal["train", "val", "test"], Annotated[int, Field(ge=0)]]
    on_corrupt: Literal["fail", "skip"]
    max_shortcut_accuracy: UnitFloat
    on_shortcut: Literal["warn", "fail"]


class DecodeConfig(_Section):
    device: Literal["cpu", "cuda"]


class HeadConfig(_Section):
    hidden: list[Annotated[int, Field(ge=1, le=65536)]]
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)]
    activation: Literal["relu", "gelu", "tanh"]
    keep_classifier: bool


class FocalConfig(_Section):
    alpha: UnitFloat | None
    gamma: Annotated[float, Field(ge=0.0, le=10.0)]


class ScheduleConfig(_Section):
    name: Literal["constant", "step", "cosine"]
    milestones: list[PositiveInt]
    factor: Annotated[float, Field(gt=0.0, le=1000.0)]
    warmup: Annotated[int, Field(ge=0, le=1000)]

    @model_validator(mode="after")
    def _milestones_for_step(self):
        if self.name == "step" and not self.milestones:
            raise ValueError("schedule 'step' needs milestones (epochs after which lr is multiplied by factor)")
        if self.milestones != sorted(set(self.milestones)):
            raise ValueError(f"milestones {self.milestones} must be strictly increasing")
        return self


class AugmentConfig(_Section):
    hflip: UnitFloat
    rotate: Annotated[float, Field(ge=0.0, le=45.0)]
    crop: Annotated[float, Field(gt=0.0, le=1.0)]
    brightness: Annotated[float, Field(ge=0.0, lt=1.0)]
    contrast: Annotated[float, Field(ge=0.0, lt=1.0)]
    gamma: Annotated[float, Field(ge=0.0, lt=1.0)]
    blur: Annotated[float, Field(ge=0.0, le=5.0)]
    sharpen: Annotated[float, Field(ge=0.0, le=5.0)]
    noise: Annotated[float, Field(ge=0.0, le=0.5)]
    resolution: Annotated[float, Field(gt=0.0, le=1.0)]


class InputConfig(_Section):
    border: Literal[BORDERS]  # type: ignore[valid-type]
    intensity: Literal[INTENSITIES]  # type: ignore[valid-type]
    aspect: Literal[ASPECTS]  # type: ignore[valid-type]


class TrainConfig(_Section):
    arch: Literal[ARCHS]  # type: ignore[valid-type]
    weights: str
    image_size: Annotated[int, Field(ge=32, le=1024)]
    input: InputConfig
    freeze: Literal["none", "backbone", "head"] | list[str | int]
    augment: AugmentConfig
    head: HeadConfig
    loss: Literal["ce", "bce", "focal"]
    focal: FocalConfig
    optimizer: Literal["sgd", "adam", "adamw"]
    lr: Annotated[float, Field(gt=0.0, le=10.0)]
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)]
    nesterov: bool
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0)]
    schedule: ScheduleConfig
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)]
    class_weights: Literal["none", "balanced"]
    sampler: Literal["shuffle", "source"]
    ema: Annotated[float, Field(ge=0.0, lt=1.0)]
    patience: Annotated[int, Field(ge=0)]
    batch_size: PositiveInt
    epochs: PositiveInt
    precision: Literal["auto", "fp32", "bf16"]
    threads: Annotated[int, Field(ge=0, le=1024)]
    deterministic: bool
    compile: bool | Literal["reduce-overhead"]
    finite_check_every: PositiveInt
    low_memory: bool
    nproc: Annotated[int, Field(ge=1, le=1024)]
    resume: bool

    @field_validator("batch_size")
    @classmethod
    def _two_or_more(cls, value: int) -> int:
        if value < 2:  # a one-image batch is left out of training (batch norm cannot use it): nothing would train
            raise ValueError("must be 2 or more: batch norm needs two images a batch (a last batch of one is left out)")
        return value

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_mode(cls, value):
        if value is not True and value is not False and value != "reduce-overhead":
            raise ValueError("use true, false or 'reduce-overhead' (compiled and replayed as CUDA graphs)")
        return value

    @field_validator("freeze")
    @classmethod
    def _freeze_list(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("an empty list freezes nothing; use 'none'")
        return value

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self):
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ValueError("nesterov: true needs optimizer 'sgd' with momentum > 0")
        return self

    @field_validator("weights")
    @classmethod
    def _weights_choice(cls, value: str) -> str:
        if value.startswith(XRV_PREFIX):
            name = value.removeprefix(XRV_PREFIX)
            if name not in XRV_WEIGHTS:
                close = difflib.get_close_matches(name, list(XRV_WEIGHTS), n=1, cutoff=0.5)
                hint = f"did you mean {XRV_PREFIX}{close[0]}? " if close else ""
                names = ", ".join(XRV_WEIGHTS)
                raise ValueError(f"{name!r} is not a torchxrayvision weights name; {hint}allowed: {names}")
            return value
        if value in ("none", "imagenet", PRETRAINED) or value.endswith((".pt", ".pth", ".bin")):
            return value
        raise ValueError(
            "must be 'none', 'imagenet', 'txrv:<name>' (chest X-ray weights, e.g. txrv:densenet121-res224-all), "
            "'pretrained' (stage pretrain's backbone) or a path to a state-dict file ending in .pt/.pth/.bin"
        )

    @property
    def network(self) -> str:
        """The torchvision network a run builds: train.arch, or the one txrv weights were trained as (the weights'
        name brings its network: `-S train.weights=txrv:densenet121-res224-all` alone builds a DenseNet121)."""
        if self.weights.startswith(XRV_PREFIX):
            return XRV_WEIGHTS[self.weights.removeprefix(XRV_PREFIX)][0]
        return self.arch


class PretrainConfig(_Section):
    method: Literal["none", "simclr"]
    epochs: PositiveInt
    batch_size: Annotated[int, Field(ge=4, le=65536)]  # a contrastive batch's other films are its negatives
    lr: Annotated[float, Field(gt=0.0, le=10.0)]
    temperature: Annotated[float, Field(gt=0.0, le=10.0)]
    projection: Annotated[int, Field(ge=8, le=8192)]
    views: AugmentConfig
    folders: list[Annotated[str, Field(min_length=1)]]
    resume: bool

    @model_validator(mode="after")
    def _views_differ(self):
        if self.method != "none" and not (self.views.crop < 1 or self.views.rotate > 0 or self.views.hflip > 0):
            raise ValueError(
                "pretrain.views: two views of a film must differ in where they look: set views.crop below 1 "
                "(e.g. 0.3), views.rotate or views.hflip"
            )
        return self


class EvaluateConfig(_Section):
    batch_size: PositiveInt
    threshold: float | str
    bootstrap: Annotated[int, Field(ge=0, le=100_000)]
    calibration_bins: Annotated[int, Field(ge=2, le=100)]
    grid_images: Annotated[int, Field(ge=0, le=64)]
    tta: Literal["none", "hflip"]
    ensemble: Literal["none", "folds"]
    coverage: Annotated[float, Field(gt=0, lt=1)]
    external: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")], str]  # no "..": a file name

    @field_validator("threshold")
    @classmethod
    def _threshold_rule(cls, value):
        parse_threshold_rule(value)  # raises ValueError with the allowed spellings
        return value


class Params(_Section):
    seed: Annotated[int, Field(ge=0)]
    data: DataConfig
    verify: VerifyConfig
    decode: DecodeConfig
    pretrain: PretrainConfig
    train: TrainConfig
    evaluate: EvaluateConfig

    @model_validator(mode="after")
    def _loss_fits_task(self):
        if self.data.task == "multilabel" and self.train.loss == "ce":
            raise ValueError(
                "train.loss: 'ce' (softmax) gives one label per image; data.task 'multilabel' needs 'bce' or 'focal'"
            )
        if self.train.weights == PRETRAINED and self.pretrain.method == "none":
            raise ValueError(
                "train.weights: 'pretrained' starts from stage pretrain's backbone, but pretrain.method is 'none'; "
                "set pretrain.method: simclr (or train.weights: none)"
            )
        if self.train.weights == PRETRAINED and self.data.folds != 0:
            raise ValueError(
                "train.weights: 'pretrained' with data.folds: stage pretrain learns from the train split's films, and "
                "cross-validation's test folds are drawn from them too (leave-one-source-out: every source's), so a "
                "fold would be scored on films its backbone pretrained on; per-fold pretraining is not built yet: "
                "set data.folds: 0 (or train.weights: none)"
            )
        if self.evaluate.ensemble == "folds" and self.data.folds == 0:
            raise ValueError("evaluate.ensemble: 'folds' averages the fold models of data.folds; set data.folds too")
        return self


def field_problem(section: type[BaseModel], key: str, value: object) -> str:
    """Why `value` is not allowed for `section`'s field `key` by params.yaml's own rules ('' when it is):
    lets values read from elsewhere (a checkpoint's spec) meet the same bounds, stated once, here."""
    field = section.model_fields[key]
    try:
        kind = Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation
        TypeAdapter(kind).validate_python(value)
    except ValidationError as exc:
        return f"{key}: {value!r} is not valid: {exc.errors()[0]['msg']}"
    return ""


def _nearest(loc: tuple) -> str:
    """'did you mean <key>? ' for an unknown key at `loc` close to a known one at the same level, else ''.
    (`dvc exp run -S +train.lrr=...`, which DVC suggests for a key params.yaml lacks, lands here too.)"""
    model: type[BaseModel] | None = Params
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if model else None
        annotation = field.annotation if field else None
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    if model is None:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6)
    prefix = ".".join(str(p) for p in loc[:-1])
    return f"did you mean {prefix + '.' if prefix else ''}{close[0]}? " if close else ""


def _describe(error: dict) -> str:
    # drop pydantic's union-branch labels such as "literal['none','backbone','head']" from the path
    key = ".".join(str(part) for part in error["loc"] if not str(part).startswith(("literal[", "list[")))
    value = error.get("input")
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key; {_nearest(error['loc'])}remove it or check its spelling"
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "literal_error":
        message = message.replace("Input should be", "allowed values are")
    if not key:  # a rule across sections: its message names the keys
        return message
    if error["type"] == "value_error" and isinstance(value, dict):
        return f"{key}: {message}"
    return f"{key}: {value!r} is not valid: {message}"


def parse_params(raw: object, source: str = str(PARAMS_FILE)) -> Params:
    """Validate a parsed params mapping; raise ConfigError naming every bad key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = "\n  ".join(_describe(e) for e in exc.errors())
        raise ConfigError(f"{source}: invalid parameters:\n  {lines}") from None


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    """Read and validate params.yaml (or another file with the same layout)."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_Yaml12FloatLoader)  # noqa: S506 (a SafeLoader)
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; run stages from the repository root") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_params(raw, str(path))

"""Every hyperparameter, declared once: name, type, default and help.

Layers, lowest first: the defaults below < a YAML recipe in rcfg/ < command-line
overrides in the same dotted names (``--training.epochs=16``). Unknown keys and
wrong types fail at load time with one line naming the key, before any work.

The result is a plain tree of dataclasses passed explicitly into functions, so
every module can be tested without parsing a command line.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A recipe problem, reported to the user as one line."""


def _help(text: str, default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A dataclass field carrying its help string (shown by ``--help-config``)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": text}, **kwargs)
    return field(default=default, metadata={"help": text}, **kwargs)


@dataclass
class DataConfig:
    train_dataset: str = _help(".beton written by write_datasets.py for training", "")
    val_dataset: str = _help(".beton written by write_datasets.py for validation", "")
    num_workers: int = _help("decode threads per rank; 0 = this rank's share of the cores", 0)
    in_memory: bool = _help("the dataset fits in RAM (OS page cache); else use order: quasi_random", True)
    order: str = _help("train traversal: random | quasi_random (page-grouped, for data larger than RAM)", "random")
    cache_mib: int = _help("quasi_random with in_memory false: process cache of all ranks together in MiB "
                           "(about cache_mib / ranks each); the window is half of it, in pages", 4096)
    decoder: str = _help("JPEG decode: fast (window first; only its region, at the largest IDCT downscale "
                         "that serves) | stock (FFCV's full-size decode; same seeded windows)", "fast")


@dataclass
class ModelConfig:
    arch: str = _help("torchvision architecture: resnet18 | resnet50", "resnet50")
    use_blurpool: bool = _help("blur before every strided conv (Zhang 2019), as ffcv-imagenet", True)
    num_classes: int = _help("0 = take it from the train .beton's class list", 0)
    drop_path_rate: float = _help("stochastic depth: drop rate of the last residual block, rising linearly "
                                  "from 0 at the first; 0 = off", 0.0)
    dropout: float = _help("dropout before the classifier; 0 = off", 0.0)


@dataclass
class ResolutionConfig:
    ramp: str = _help("progressive-resizing style: ffcv (epochs) | composer (fractions of training)", "ffcv")
    min_res: int = _help("ffcv ramp: training resolution up to start_ramp", 160)
    max_res: int = _help("both ramps: resolution at the end of the ramp", 192)
    start_ramp: int = _help("ffcv ramp: last epoch at min_res", 0)
    end_ramp: int = _help("ffcv ramp: first epoch at max_res", 0)
    initial_scale: float = _help("composer ramp: starting side as a fraction of max_res", 0.5)
    delay_fraction: float = _help("composer ramp: fraction of training held at initial_scale", 0.5)
    finetune_fraction: float = _help("composer ramp: fraction of training (at its end) at full max_res", 0.2)
    size_increment: int = _help("composer ramp: resolutions are multiples of this", 32)
    fixres_epochs: int = _help("last epochs in the FixRes phase; -1 = max(1, round(epochs/10)), 0 = none", 0)
    fixres_res: int = _help("FixRes phase resolution (at least the main phase's largest)", 224)
    fixres_crop_ratio: float = _help("FixRes: crop side / resized shorter side (resize to res/ratio)", 224 / 256)
    fixres_train: str = _help("FixRes phase trains: all | bn_fc (BatchNorm and classifier only, the "
                              "FixRes paper's fine-tuning)", "all")


@dataclass
class LRConfig:
    lr_per_256: float = _help("peak learning rate per 256 images of global batch", 0.1)
    schedule: str = _help("shape after warm-up: linear | cosine | step | onecycle (cosine warm-up "
                          "and cosine decay)", "linear")
    warmup_epochs: float = _help("linear warm-up from warmup_start_factor*peak to peak", 2.0)
    warmup_start_factor: float = _help("warm-up starts at this fraction of the peak", 1e-4)
    end_factor: float = _help("linear/cosine decay ends at this fraction of the peak", 0.0)
    step_ratio: float = _help("step schedule: multiply the LR by this ...", 0.1)
    step_length: int = _help("step schedule: ... every this many epochs", 30)


@dataclass
class TrainingConfig:
    epochs: int = _help("number of epochs", 16)
    batch_size: int = _help("images per rank per step; global batch = batch_size x ranks", 512)
    optimizer: str = _help("sgd | adamw | lamb | lars (the last two for very large batches)", "sgd")
    momentum: float = _help("SGD and LARS momentum", 0.9)
    nesterov: bool = _help("Nesterov momentum (SGD)", False)
    betas: list[float] = _help("AdamW and LAMB (beta1, beta2)", [0.9, 0.999])
    grad_clip_norm: float = _help("clip the gradients' global norm to this; 0 = off", 0.0)
    weight_decay: float = _help("L2 on conv/linear weights; BN and biases get none", 5e-5)
    label_smoothing: float = _help("cross-entropy label smoothing", 0.1)
    precision: str = _help("fp32 | bf16 | fp16 (fp16 uses a GradScaler)", "fp16")
    channels_last: bool = _help("NHWC memory format for the model and its inputs", True)
    seed: int = _help("seed for weights, data order and augmentation", 0)
    max_bad_steps: int = _help("stop after this many consecutive non-finite losses", 20)
    compile: bool = _help("torch.compile the model", False)


@dataclass
class AugmentConfig:
    """Main-phase regularizers; all are switched off in the FixRes phase, whose point is minimal augmentation."""

    mixup_alpha: float = _help("mixup Beta(alpha, alpha); 0 = off", 0.0)
    cutmix_alpha: float = _help("CutMix Beta(alpha, alpha); 0 = off", 0.0)
    cutmix_share: float = _help("with both on: the share of mixed batches that use CutMix", 0.5)
    mix_prob: float = _help("share of batches that are mixed at all", 1.0)
    randaugment_ops: int = _help("RandAugment: operations per image; 0 = off", 0)
    randaugment_magnitude: int = _help("RandAugment: magnitude M (0-30)", 9)
    randaugment_group: int = _help("RandAugment runs on the device on groups of this many images, "
                                   "each group drawing its own operations", 16)


@dataclass
class EMAConfig:
    decay: float = _help("exponential moving average of the weights, evaluated beside them; 0 = off", 0.0)
    every: int = _help("update the average every this many steps", 1)
    warmup: bool = _help("ramp the decay up from 0 over the first updates (timm's ModelEmaV3 warm-up)", True)


@dataclass
class ValidationConfig:
    batch_size: int = _help("images per rank per validation step", 256)
    resolution: int = _help("center-crop side at evaluation", 256)
    crop_ratio: float = _help("center crop covers this fraction of the shorter side", 224 / 256)
    flip_tta: bool = _help("average logits over the image and its mirror", True)
    every: int = _help("evaluate every N epochs (the last epoch always)", 1)
    resolutions: list[int] = _help("after training, also evaluate at each of these test resolutions "
                                   "and print the table (e.g. [224, 256, 288, 320])", [])


@dataclass
class LoggingConfig:
    folder: str = _help("run folder: logs, checkpoints, final weights", "runs/default")
    resume: bool = _help("continue from the run folder's last checkpoint if there is one", True)
    progress: bool = _help("tqdm progress bar on rank 0", True)
    checkpoint_minutes: float = _help("also checkpoint inside an epoch every this many minutes; 0 = per epoch only",
                                      0.0)


@dataclass
class DistConfig:
    backend: str = _help("auto (nccl on GPU, gloo on CPU) | nccl | gloo", "auto")
    device: str = _help("auto | cuda | cpu", "auto")
    timeout_s: int = _help("collective timeout: a dead rank makes the others fail after this", 600)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    resolution: ResolutionConfig = field(default_factory=ResolutionConfig)
    lr: LRConfig = field(default_factory=LRConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    dist: DistConfig = field(default_factory=DistConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "data.order": ("random", "quasi_random"),
    "data.decoder": ("fast", "stock"),
    "resolution.ramp": ("ffcv", "composer"),
    "resolution.fixres_train": ("all", "bn_fc"),
    "model.arch": ("resnet18", "resnet50"),
    "lr.schedule": ("linear", "cosine", "step", "onecycle"),
    "training.optimizer": ("sgd", "adamw", "lamb", "lars"),
    "training.precision": ("fp32", "bf16", "fp16"),
    "dist.backend": ("auto", "nccl", "gloo"),
    "dist.device": ("auto", "cuda", "cpu"),
}


def _one_line(err: OmegaConfBaseException) -> str:
    """OmegaConf errors span several lines; keep the message and the full key."""
    message = str(err).splitlines()[0]
    key = getattr(err, "full_key", None)
    return f"{key}: {message}" if key else message


def _parse_override(arg: str) -> str:
    """``--training.epochs=16`` -> ``training.epochs=16`` (OmegaConf dotlist)."""
    body = arg[2:] if arg.startswith("--") else arg
    if "=" not in body or "." not in body.split("=", 1)[0]:
        raise ConfigError(f"override {arg!r} is not of the form --section.key=value")
    return body


def load_config(recipe: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults < recipe YAML < overrides; raises ConfigError naming the bad key."""
    merged = OmegaConf.structured(Config)
    layers = []
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            raise ConfigError(f"recipe {path} does not exist")
        try:
            content = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"recipe {path} is not valid YAML: {str(err).splitlines()[0]}") from err
        if not isinstance(content, dict):
            raise ConfigError(f"recipe {path} must be a mapping of sections")
        for section, body in content.items():
            if not isinstance(body, dict):
                raise ConfigError(f"{section}: recipe {path} must give this section as a mapping of keys")
        layers.append(OmegaConf.create(content))
    dotlist = [_parse_override(arg) for arg in overrides]
    try:
        layers.append(OmegaConf.from_dotlist(dotlist))
        for layer in layers:
            merged = OmegaConf.merge(merged, layer)
        config: Config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(_one_line(err)) from err
    check_choices(config)
    return config


def check_choices(config: Config) -> None:
    for dotted, allowed in CHOICES.items():
        value = get_value(config, dotted)
        if value not in allowed:
            raise ConfigError(f"{dotted}: {value!r} is not one of {', '.join(allowed)}")


def get_value(config: Config, dotted: str) -> Any:
    section, key = dotted.split(".")
    return getattr(getattr(config, section), key)


def to_dict(config: Config) -> dict[str, dict[str, Any]]:
    return dataclasses.asdict(config)


def to_yaml(config: Config) -> str:
    """The resolved recipe, loadable again by load_config."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def describe() -> str:
    """Every key with its type, default and help: the reference for recipe writers."""
    lines = []
    for section in dataclasses.fields(Config):
        lines.append(f"{section.name}:")
        for param in dataclasses.fields(section.default_factory()):  # type: ignore[misc]
            default = param.default if param.default is not dataclasses.MISSING else param.default_factory()  # type: ignore[misc]
            type_name = param.type if isinstance(param.type, str) else param.type.__name__
            lines.append(f"  {param.name} ({type_name}, default {default!r}): {param.metadata.get('help', '')}")
    return "\n".join(lines)

"""Every hyperparameter, declared once with fastargs: name, type, default, help and allowed values.

Layers, lowest first: the declared defaults (the base recipe) < a YAML recipe in
rcfg/, which holds only what differs from the base < command-line overrides in
the same dotted names (``--training.epochs=16``). An unknown key, a wrong type
or a value outside its range or choices fails at load time with one line
naming the key, before any work. Rules between keys live in ``preflight``.

Reading a recipe file and the overrides is ``recipes``'; this module declares
the keys and checks values. fastargs collects the layers; the result is turned into a plain tree of
dataclasses (generated from the same declarations) and passed explicitly into
functions, so every module can be tested without parsing a command line.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Sequence

import fastargs
import yaml
from fastargs import Param, Section
from fastargs.validation import And, Checker, InRange, OneOf

from .beton_format import DEFAULT_FIELDS


class ConfigError(ValueError):
    """A recipe problem, reported to the user as one line."""


# ---------------------------------------------------------------- checkers
class Typed(Checker):
    """Exactly this type (YAML's, not Python's coercions: ``true`` is not 1, ``3.5`` is not an int).
    A number written as a string is a number: PyYAML reads ``5e-5`` (no dot) as one."""

    NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}

    def __init__(self, kind: type):
        self.kind = kind

    def check(self, value: Any) -> Any:
        if isinstance(value, str) and self.kind in (int, float):
            value = self.kind(value)  # ValueError for anything but a number
        if isinstance(value, bool) and self.kind is not bool:
            raise TypeError(value)
        if self.kind is float and isinstance(value, int):
            return float(value)
        if not isinstance(value, self.kind):
            raise TypeError(value)
        return value

    def help(self) -> str:
        return self.NAMES[self.kind]


class ListOf(Checker):
    """A list whose items each pass ``item`` (and, if given, exactly ``length`` of them)."""

    def __init__(self, item: Checker, length: int | None = None):
        self.item, self.length = item, length

    def check(self, value: Any) -> list:
        if not isinstance(value, list) or (self.length is not None and len(value) != self.length):
            raise TypeError(value)
        return [self.item.check(entry) for entry in value]

    def help(self) -> str:
        count = f"{self.length} " if self.length is not None else ""
        return f"a list of {count}items, each {self.item.help()}"


class Ascending(Checker):
    """A [min, max] pair: min <= max."""

    def check(self, value: Any) -> Any:
        if not value[0] <= value[1]:
            raise ValueError(value)
        return value

    def help(self) -> str:
        return "[min, max] with min <= max"


class Positive(Checker):
    def check(self, value: Any) -> Any:
        if not value > 0:
            raise ValueError(value)
        return value

    def help(self) -> str:
        return "positive"


class FieldName(Checker):
    """A .beton field name: FFCV stores at most 16 bytes of it."""

    MAX_BYTES = 16  # FFCV's FieldDescType name

    def check(self, value: Any) -> Any:
        if not 0 < len(value.encode()) <= self.MAX_BYTES:
            raise ValueError(value)
        return value

    def help(self) -> str:
        return f"a field name of 1 to {self.MAX_BYTES} bytes"


class Interval(InRange):
    """fastargs' InRange with either end open: ``Interval(0, 1, "[)")`` is 0 <= x < 1."""

    def __init__(self, low: float, high: float = float("inf"), ends: str = "[]"):
        super().__init__(min=low, max=high)
        self.ends = ends

    def check(self, value: Any) -> Any:
        super().check(value)
        if (self.ends[0] == "(" and value == self.low) or (self.ends[1] == ")" and value == self.high):
            raise ValueError(value)
        return value

    def help(self) -> str:
        if self.high == float("inf"):
            return f"{'above' if self.ends[0] == '(' else 'at least'} {self.low:g}"
        return f"in {self.ends[0]}{self.low:g}, {self.high:g}{self.ends[1]}"


class Choice(OneOf):
    """fastargs' OneOf, listing the choices in their declared order."""

    def __init__(self, *choices: str):
        super().__init__(choices)
        self.choices = choices

    def help(self) -> str:
        return f"one of {', '.join(self.choices)}"


def typed(kind: type, *constraints: Checker) -> Checker:
    return And(Typed(kind), *constraints) if constraints else Typed(kind)


INT, FLOAT, BOOL, STR = typed(int), typed(float), typed(bool), typed(str)
POSITIVE_INT, POSITIVE_FLOAT = typed(int, Positive()), typed(float, Positive())
FRACTION = typed(float, InRange(0.0, 1.0))  # 0 <= x <= 1
OPEN_FRACTION = typed(float, Interval(0.0, 1.0, "[)"))  # 0 <= x < 1
NON_NEGATIVE = typed(float, Interval(0.0))


def choice(*choices: str) -> Checker:
    return typed(str, Choice(*choices))


def range_pair(item: Checker) -> Checker:
    """A [min, max] recipe value, each end passing ``item``."""
    return And(ListOf(item, length=2), Ascending())


# ---------------------------------------------------------------- declarations
RRC_SCALE = (0.08, 1.0)  # torchvision's RandomResizedCrop defaults (augment.rrc_scale, rrc_ratio)
RRC_RATIO = (3 / 4, 4 / 3)
STANDARD_CROP_RATIO = 224 / 256  # the standard ImageNet val transform: a 224 crop of the image resized to 256
LR_REFERENCE_BATCH = 256  # lr.lr_per_256 is the peak LR per this many images of global batch


def declare(target: fastargs.Config) -> fastargs.Config:
    """Every recipe key, into ``target``; its defaults are the base recipe."""
    def section(name: str, desc: str) -> Section:
        return Section(name, desc, config_descriptor=target)

    section("data", "datasets and how they are read").params(
        train_dataset=Param(STR, ".beton for training: written by write_datasets.py, or by FFCV's DatasetWriter "
                            "(ffcv-imagenet's write_imagenet.py; any extension)", default=""),
        val_dataset=Param(STR, ".beton for validation, with the train set's class indices", default=""),
        image_field=Param(typed(str, FieldName()), "name of the datasets' image field (an RGBImageField)",
                          default=DEFAULT_FIELDS.image),
        label_field=Param(typed(str, FieldName()), "name of the datasets' label field (an IntField of class "
                          "indices)", default=DEFAULT_FIELDS.label),
        num_workers=Param(typed(int, Interval(0)), "decode threads per rank; 0 = this rank's share of the cores",
                          default=0),
        in_memory=Param(BOOL, "the dataset fits in RAM (OS page cache); else use order: quasi_random",
                        default=True),
        order=Param(choice("random", "quasi_random"),
                    "train traversal: random | quasi_random (page-grouped, for data larger than RAM)",
                    default="random"),
        cache_mib=Param(POSITIVE_INT, "quasi_random with in_memory false: process cache of all ranks together "
                        "in MiB (about cache_mib / ranks each); the window is half of it, in pages", default=4096),
        remote_cache_dir=Param(STR, "s3:// gs:// az:// datasets: the node's local cache of their pages and "
                               "metadata ('' = ~/.cache/ffcv_imagenet/remote)", default=""),
        remote_cache_gib=Param(POSITIVE_FLOAT, "s3:// gs:// az:// datasets: the page cache's bound in GiB, all "
                               "ranks of the node together", default=50.0),
        remote_requests=Param(POSITIVE_INT, "s3:// gs:// az:// datasets: concurrent ranged GETs of each rank's "
                              "prefetcher", default=16),
        decoder=Param(choice("fast", "stock"), "JPEG decode: fast (window first; only its region, at the "
                      "largest IDCT downscale that serves) | stock (FFCV's full-size decode; same seeded "
                      "windows)", default="fast"),
    )
    section("model", "the network").params(
        arch=Param(choice("resnet18", "resnet50"), "torchvision architecture: resnet18 | resnet50",
                   default="resnet50"),
        use_blurpool=Param(BOOL, "blur before every strided conv (Zhang 2019), as ffcv-imagenet", default=True),
        num_classes=Param(typed(int, Interval(0)), "0 = the datasets' class count (their sidecar's class list, "
                          "else their labels)", default=0),
        drop_path_rate=Param(OPEN_FRACTION, "stochastic depth: drop rate of the last residual block, rising "
                             "linearly from 0 at the first; 0 = off", default=0.0),
        dropout=Param(OPEN_FRACTION, "dropout before the classifier; 0 = off", default=0.0),
    )
    section("resolution", "progressive resizing and the FixRes phase").params(
        ramp=Param(choice("ffcv", "composer"),
                   "progressive-resizing style: ffcv (epochs) | composer (fractions of training)", default="ffcv"),
        min_res=Param(POSITIVE_INT, "ffcv ramp: training resolution up to start_ramp", default=160),
        max_res=Param(POSITIVE_INT, "both ramps: resolution at the end of the ramp", default=192),
        start_ramp=Param(typed(int, Interval(0)), "ffcv ramp: last epoch at min_res", default=0),
        end_ramp=Param(typed(int, Interval(0)), "ffcv ramp: first epoch at max_res", default=0),
        initial_scale=Param(typed(float, Interval(0.0, 1.0, "(]")),
                            "composer ramp: starting side as a fraction of max_res", default=0.5),
        delay_fraction=Param(OPEN_FRACTION, "composer ramp: fraction of training held at initial_scale",
                             default=0.5),
        finetune_fraction=Param(OPEN_FRACTION, "composer ramp: fraction of training (at its end) at full max_res",
                                default=0.2),
        size_increment=Param(POSITIVE_INT, "composer ramp: resolutions are multiples of this", default=32),
        fixres_epochs=Param(typed(int, Interval(-1)),
                            "last epochs in the FixRes phase; -1 = max(1, round(epochs/10)), 0 = none", default=0),
        fixres_res=Param(POSITIVE_INT, "FixRes phase resolution (at least the main phase's largest)", default=224),
        fixres_crop_ratio=Param(typed(float, Interval(0.0, 1.0, "(]")),
                                "FixRes: crop side / resized shorter side (resize to res/ratio)",
                                default=STANDARD_CROP_RATIO),
        fixres_train=Param(choice("all", "bn_fc"), "FixRes phase trains: all | bn_fc (BatchNorm and classifier "
                           "only, the FixRes paper's fine-tuning)", default="all"),
    )
    section("lr", "learning-rate schedule").params(
        lr_per_256=Param(NON_NEGATIVE, "peak learning rate per 256 images of global batch", default=0.1),
        schedule=Param(choice("linear", "cosine", "step", "onecycle"), "shape after warm-up: linear | cosine | "
                       "step | onecycle (cosine warm-up and cosine decay)", default="linear"),
        warmup_epochs=Param(NON_NEGATIVE, "linear warm-up from warmup_start_factor*peak to peak", default=2.0),
        warmup_start_factor=Param(FRACTION, "warm-up starts at this fraction of the peak", default=1e-4),
        end_factor=Param(FRACTION, "linear/cosine decay ends at this fraction of the peak", default=0.0),
        step_ratio=Param(NON_NEGATIVE, "step schedule: multiply the LR by this ...", default=0.1),
        step_length=Param(POSITIVE_INT, "step schedule: ... every this many epochs", default=30),
    )
    section("lr_range", "the LR range test (train_imagenet.py --lr-range-test), in lr.lr_per_256's units").params(
        start=Param(POSITIVE_FLOAT, "first LR of the sweep, per 256 images of global batch", default=1e-4),
        end=Param(POSITIVE_FLOAT, "last LR of the sweep (reached after steps), per 256 images", default=10.0),
        steps=Param(typed(int, Interval(2)), "optimizer steps of the sweep; the LR grows by the same factor "
                    "each step", default=100),
        smoothing=Param(OPEN_FRACTION, "exponential smoothing of the loss (bias-corrected): weight of the past",
                        default=0.98),
        divergence=Param(typed(float, Interval(1.0, ends="()")), "stop once the smoothed loss exceeds this many "
                         "times its minimum so far", default=4.0),
    )
    section("training", "optimisation").params(
        epochs=Param(POSITIVE_INT, "number of epochs", default=16),
        batch_size=Param(POSITIVE_INT, "images per rank per micro-step; global batch = batch_size x accumulate "
                         "x ranks", default=512),
        accumulate=Param(POSITIVE_INT, "micro-steps per optimizer update (gradient accumulation): reproduces a "
                         "published global batch on fewer GPUs; the LR and schedule count updates", default=1),
        optimizer=Param(choice("sgd", "adamw", "lamb", "lars"),
                        "sgd | adamw | lamb | lars (the last two for very large batches)", default="sgd"),
        momentum=Param(FRACTION, "SGD and LARS momentum", default=0.9),
        nesterov=Param(BOOL, "Nesterov momentum (SGD)", default=False),
        betas=Param(ListOf(typed(float, Interval(0.0, 1.0, "[)")), length=2), "AdamW and LAMB (beta1, beta2)",
                    default=[0.9, 0.999]),
        grad_clip_norm=Param(NON_NEGATIVE, "clip the gradients' global norm to this; 0 = off", default=0.0),
        weight_decay=Param(NON_NEGATIVE, "L2 on conv/linear weights; BN and biases get none", default=5e-5),
        label_smoothing=Param(OPEN_FRACTION, "label smoothing: targets mixed with the uniform distribution "
                              "(every loss)", default=0.1),
        loss=Param(choice("ce", "bce", "focal"), "ce (softmax cross-entropy) | bce (per-class sigmoid, "
                   "ResNet-strikes-back) | focal (softmax focal loss)", default="ce"),
        bce_target_threshold=Param(OPEN_FRACTION, "bce: targets above this become 1, the rest 0 (after "
                                   "smoothing and mixing); 0 = off", default=0.0),
        focal_gamma=Param(NON_NEGATIVE, "focal: the modulating exponent; 0 = cross-entropy", default=2.0),
        focal_alpha=Param(ListOf(NON_NEGATIVE), "focal: one weight per class; [] = all 1", default=[]),
        precision=Param(choice("fp32", "bf16", "fp16"), "fp32 | bf16 | fp16 (fp16 uses a GradScaler)",
                        default="fp16"),
        channels_last=Param(BOOL, "NHWC memory format for the model and its inputs", default=True),
        seed=Param(typed(int, Interval(0)), "seed for weights, data order and augmentation", default=0),
        max_bad_steps=Param(POSITIVE_INT, "stop after this many consecutive non-finite losses", default=20),
        compile=Param(BOOL, "torch.compile the model", default=False),
    )
    section("augment", "augmentation; mixup, CutMix and RandAugment are switched off in the FixRes phase, "
            "whose point is minimal augmentation (its crop is flipped as augment.flip says)").params(
        flip=Param(BOOL, "random horizontal flip of training crops (both phases); false for data that is not "
                   "mirror-invariant (text, digits)", default=True),
        rrc_scale=Param(range_pair(typed(float, Interval(0.0, 1.0, "(]"))), "RandomResizedCrop: [min, max] "
                        "window area as a fraction of the image", default=list(RRC_SCALE)),
        rrc_ratio=Param(range_pair(POSITIVE_FLOAT), "RandomResizedCrop: [min, max] window aspect ratio "
                        "(width / height)", default=list(RRC_RATIO)),
        mixup_alpha=Param(NON_NEGATIVE, "mixup Beta(alpha, alpha); 0 = off", default=0.0),
        cutmix_alpha=Param(NON_NEGATIVE, "CutMix Beta(alpha, alpha); 0 = off", default=0.0),
        cutmix_share=Param(FRACTION, "with both on: the share of mixed batches that use CutMix", default=0.5),
        mix_prob=Param(FRACTION, "share of batches that are mixed at all", default=1.0),
        randaugment_ops=Param(typed(int, InRange(0, 14)), "RandAugment: operations per image; 0 = off", default=0),
        randaugment_magnitude=Param(typed(int, InRange(0, 30)), "RandAugment: magnitude M (0-30)", default=9),
        randaugment_group=Param(POSITIVE_INT, "RandAugment runs on the device on groups of this many images, "
                                "each group drawing its own operations", default=16),
    )
    section("ema", "weight averaging").params(
        decay=Param(OPEN_FRACTION, "exponential moving average of the weights, evaluated beside them; 0 = off",
                    default=0.0),
        every=Param(POSITIVE_INT, "update the average every this many steps", default=1),
        warmup=Param(BOOL, "ramp the decay up from 0 over the first updates (timm's ModelEmaV3 warm-up)",
                     default=True),
    )
    section("validation", "evaluation").params(
        batch_size=Param(POSITIVE_INT, "images per rank per validation step", default=256),
        resolution=Param(POSITIVE_INT, "center-crop side at evaluation", default=256),
        crop_ratio=Param(typed(float, Interval(0.0, 1.0, "(]")),
                         "center crop covers this fraction of the shorter side",
                         default=STANDARD_CROP_RATIO),
        flip_tta=Param(BOOL, "average logits over the image and its mirror", default=True),
        every=Param(POSITIVE_INT, "evaluate every N epochs (the last epoch always)", default=1),
        resolutions=Param(ListOf(POSITIVE_INT), "after training, also evaluate at each of these test "
                          "resolutions and print the table (e.g. [224, 256, 288, 320])", default=[]),
    )
    section("logging", "the run folder").params(
        folder=Param(STR, "run folder: logs, checkpoints, final weights", default="runs/default"),
        resume=Param(BOOL, "continue from the run folder's last checkpoint if there is one", default=True),
        progress=Param(BOOL, "tqdm progress bar on rank 0", default=True),
        checkpoint_minutes=Param(NON_NEGATIVE, "also checkpoint inside an epoch every this many minutes; "
                                 "0 = per epoch only", default=0.0),
        checkpoint_every=Param(POSITIVE_INT, "checkpoint at the end of every this many epochs (and the last); "
                               "written in the background from a host copy", default=1),
        tensorboard=Param(BOOL, "also write the epoch records and per-step loss/LR as TensorBoard scalars to "
                          "RUN/tensorboard (rank 0; needs the tensorboard package)", default=False),
        tensorboard_every=Param(POSITIVE_INT, "with tensorboard: write the training loss and LR every this many "
                                "steps", default=50),
    )
    section("dist", "processes and devices").params(
        backend=Param(choice("auto", "nccl", "gloo"), "auto (nccl on GPU, gloo on CPU) | nccl | gloo",
                      default="auto"),
        device=Param(choice("auto", "cuda", "cpu"), "auto | cuda | cpu", default="auto"),
        timeout_s=Param(POSITIVE_INT, "collective timeout: a dead rank makes the others fail after this",
                        default=600),
    )
    return target


DECLARED = declare(fastargs.Config())
SECTIONS: dict[str, dict[str, Param]] = {
    ns[0]: {path[1]: DECLARED.entries[path] for path in paths} for ns, paths in DECLARED.sections_to_entries.items()}


# ---------------------------------------------------------------- the typed tree, generated from the declarations
def base_type(checker: Checker) -> type:
    """The Python type a checker admits (for the generated dataclass' annotation)."""
    if isinstance(checker, And):
        return base_type(checker.checkers[0])
    if isinstance(checker, ListOf):
        return list
    return checker.kind


def _default_field(param: Param) -> Any:
    default = param.default
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"help": param.desc})
    return dataclasses.field(default=default, metadata={"help": param.desc})


def _section_class(name: str, params: dict[str, Param]) -> type:
    fields = [(key, base_type(param.checker), _default_field(param)) for key, param in params.items()]
    cls = dataclasses.make_dataclass(f"{name.title().replace('_', '')}Config", fields)
    cls.__module__ = __name__
    cls.__doc__ = DECLARED.sections[(name,)].desc
    return cls


DataConfig = _section_class("data", SECTIONS["data"])
ModelConfig = _section_class("model", SECTIONS["model"])
ResolutionConfig = _section_class("resolution", SECTIONS["resolution"])
LRConfig = _section_class("lr", SECTIONS["lr"])
LRRangeConfig = _section_class("lr_range", SECTIONS["lr_range"])
TrainingConfig = _section_class("training", SECTIONS["training"])
AugmentConfig = _section_class("augment", SECTIONS["augment"])
EMAConfig = _section_class("ema", SECTIONS["ema"])
ValidationConfig = _section_class("validation", SECTIONS["validation"])
LoggingConfig = _section_class("logging", SECTIONS["logging"])
DistConfig = _section_class("dist", SECTIONS["dist"])
SECTION_CLASSES = {"data": DataConfig, "model": ModelConfig, "resolution": ResolutionConfig, "lr": LRConfig,
                   "lr_range": LRRangeConfig, "training": TrainingConfig, "augment": AugmentConfig, "ema": EMAConfig,
                   "validation": ValidationConfig, "logging": LoggingConfig, "dist": DistConfig}
assert list(SECTION_CLASSES) == list(SECTIONS), "every declared section has its class"
Config = dataclasses.make_dataclass("Config", [
    (name, cls, dataclasses.field(default_factory=cls)) for name, cls in SECTION_CLASSES.items()])
Config.__module__ = __name__
Config.__doc__ = "The whole recipe: one attribute per section (config.training.epochs)."


# ---------------------------------------------------------------- one value's check, one line
def _failed_part(checker: Checker, value: Any) -> Checker | None:
    """The first part of ``checker`` that refuses ``value`` (None: it passes)."""
    parts = checker.checkers if isinstance(checker, And) else [checker]
    for part in parts:
        try:
            value = part.check(value)
        except Exception:  # fastargs' checkers raise TypeError, ValueError or whatever a comparison raises
            return part
    return None


def check_value(dotted: str, value: Any) -> Any:
    """``value`` as the declaration of ``dotted`` admits it; ConfigError naming the key otherwise."""
    section, key = dotted.split(".")
    checker = SECTIONS[section][key].checker
    failed = _failed_part(checker, value)
    if failed is not None:
        raise ConfigError(f"{dotted} must be {failed.help()}: {value!r}")
    return checker.check(value)


def check_section(name: str, section: Any) -> None:
    """Every value of a section object (e.g. a ResolutionConfig built in code) against its declaration."""
    for key in SECTIONS[name]:
        check_value(f"{name}.{key}", getattr(section, key))


def _unknown(what: str, shown: str, name: str, known: Sequence[str], prefix: str = "") -> ConfigError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
    return ConfigError(f"{shown}: unknown {what}{hint}; --help-config lists every key")


def check_known(dotted: str) -> None:
    section, _, key = dotted.partition(".")
    if section not in SECTIONS:
        raise _unknown("section", section, section, list(SECTIONS))
    if key not in SECTIONS[section]:
        raise _unknown("key", dotted, key, list(SECTIONS[section]), prefix=f"{section}.")


# ---------------------------------------------------------------- dotted values -> the typed tree
def flatten(recipe: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """{"training": {"epochs": 3}} -> {"training.epochs": 3}."""
    return {f"{section}.{key}": value for section, body in recipe.items() for key, value in body.items()}


def collect(values: dict[str, Any]) -> Config:
    """Declared defaults < ``values`` (dotted keys), collected and checked by fastargs -> the typed tree."""
    for dotted in values:
        check_known(dotted)
    collected = declare(fastargs.Config())
    collected.collect({dotted: value for dotted, value in values.items() if value is not None})
    errors = collected.validate(mode="errordict")
    for dotted, value in values.items():  # fastargs skips nulls; a null is a wrong type here
        if value is None or tuple(dotted.split(".")) in errors:
            check_value(dotted, value)
    sections = {name: cls(**{key: collected[(name, key)] for key in SECTIONS[name]})
                for name, cls in SECTION_CLASSES.items()}
    return Config(**sections)


# ---------------------------------------------------------------- writing and describing
def get_value(config: Config, dotted: str) -> Any:
    section, key = dotted.split(".")
    return getattr(getattr(config, section), key)


def to_dict(config: Config) -> dict[str, dict[str, Any]]:
    return dataclasses.asdict(config)


def to_yaml(config: Config) -> str:
    """The resolved recipe, loadable again by load_config."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def delta(config: Config) -> dict[str, dict[str, Any]]:
    """Only what differs from the base recipe: the form rcfg/ files are written in."""
    base, own = to_dict(Config()), to_dict(config)
    changed = {section: {key: value for key, value in body.items() if value != base[section][key]}
               for section, body in own.items()}
    return {section: body for section, body in changed.items() if body}


def describe() -> str:
    """Every key with its type, default, allowed values and help: the reference for recipe writers."""
    lines = []
    for section, params in SECTIONS.items():
        lines.append(f"{section}: ({DECLARED.sections[(section,)].desc})")
        for key, param in params.items():
            lines.append(f"  {key} ({param.checker.help()}; default {param.default!r}): {param.desc}")
    return "\n".join(lines)

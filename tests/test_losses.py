"""training.loss: each loss against the formula worked out with plain math on 3-class examples."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ffcv_imagenet.config import AugmentConfig, Config, ConfigError, TrainingConfig
from ffcv_imagenet.losses import build_criterion
from ffcv_imagenet.preflight import Datasets, check_run_settings
from ffcv_imagenet.regularizers import BatchMixer

LOGITS = [[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]]
LABELS = [1, 2]


def softmax(row: list[float]) -> list[float]:
    exps = [math.exp(z) for z in row]
    return [e / sum(exps) for e in exps]


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def loss_of(cfg: TrainingConfig, targets: torch.Tensor) -> float:
    return build_criterion(cfg)(torch.tensor(LOGITS), targets).item()


def smoothed(label: int, smoothing: float) -> list[float]:
    return [(1 - smoothing) * (k == label) + smoothing / 3 for k in range(3)]


def test_ce_with_label_smoothing() -> None:
    expected = sum(-sum(t * math.log(p) for t, p in zip(smoothed(y, 0.1), softmax(z)))
                   for z, y in zip(LOGITS, LABELS)) / 2
    assert loss_of(TrainingConfig(loss="ce", label_smoothing=0.1), torch.tensor(LABELS)) == pytest.approx(expected)


def bce(targets: list[list[float]]) -> float:
    """Mean over every (image, class) element of the binary cross-entropy of sigmoid(logit)."""
    terms = [-(t * math.log(sigmoid(z)) + (1 - t) * math.log(1 - sigmoid(z)))
             for row, target in zip(LOGITS, targets) for z, t in zip(row, target)]
    return sum(terms) / len(terms)


def test_bce_on_labels_smoothing_and_probabilities() -> None:
    one_hot = [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    assert loss_of(TrainingConfig(loss="bce", label_smoothing=0.0), torch.tensor(LABELS)) == pytest.approx(bce(one_hot))
    assert loss_of(TrainingConfig(loss="bce", label_smoothing=0.3), torch.tensor(LABELS)) == pytest.approx(
        bce([smoothed(y, 0.3) for y in LABELS]))
    mixed = [[0.3, 0.7, 0.0], [0.0, 0.15, 0.85]]
    assert loss_of(TrainingConfig(loss="bce", label_smoothing=0.0), torch.tensor(mixed)) == pytest.approx(bce(mixed))


def test_bce_target_threshold_makes_targets_zero_or_one() -> None:
    mixed = torch.tensor([[0.3, 0.7, 0.0], [0.0, 0.15, 0.85]])
    cfg = TrainingConfig(loss="bce", label_smoothing=0.0, bce_target_threshold=0.2)
    assert loss_of(cfg, mixed) == pytest.approx(bce([[1, 1, 0], [0, 0, 1]]))
    cfg.bce_target_threshold = 0.5
    assert loss_of(cfg, mixed) == pytest.approx(bce([[0, 1, 0], [0, 0, 1]]))


def focal(targets: list[list[float]], gamma: float, alpha: list[float] = (1.0, 1.0, 1.0)) -> float:
    per_image = [-sum(a * t * (1 - p) ** gamma * math.log(p) for a, t, p in zip(alpha, target, softmax(row)))
                 for row, target in zip(LOGITS, targets)]
    return sum(per_image) / len(per_image)


def test_focal_with_gamma_alpha_and_mixed_targets() -> None:
    one_hot = [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    cfg = TrainingConfig(loss="focal", label_smoothing=0.0, focal_gamma=2.0)
    assert loss_of(cfg, torch.tensor(LABELS)) == pytest.approx(focal(one_hot, 2.0))
    mixed = [[0.6, 0.4, 0.0], [0.0, 0.25, 0.75]]
    assert loss_of(cfg, torch.tensor(mixed)) == pytest.approx(focal(mixed, 2.0))
    cfg.focal_alpha = [0.25, 1.0, 2.0]
    assert loss_of(cfg, torch.tensor(mixed)) == pytest.approx(focal(mixed, 2.0, [0.25, 1.0, 2.0]))
    cfg.focal_alpha, cfg.focal_gamma, cfg.label_smoothing = [], 0.0, 0.1  # gamma 0: cross-entropy
    assert loss_of(cfg, torch.tensor(LABELS)) == pytest.approx(
        loss_of(TrainingConfig(loss="ce", label_smoothing=0.1), torch.tensor(LABELS)))


@pytest.mark.parametrize("loss", ["ce", "bce", "focal"])
def test_mixup_and_cutmix_targets_train_with_every_loss(loss: str) -> None:
    """Targets of a mixed batch are probabilities; each loss is linear in them, so the mixed loss
    is the same blend of the two pure losses, and its gradient reaches the logits."""
    torch.manual_seed(0)
    mixer = BatchMixer(AugmentConfig(mixup_alpha=0.4, cutmix_alpha=1.0), num_classes=3)
    labels = torch.tensor([0, 1, 2, 1])
    _, targets = mixer(torch.randn(4, 3, 8, 8), labels)
    criterion = build_criterion(TrainingConfig(loss=loss, label_smoothing=0.1))
    logits = torch.randn(4, 3, requires_grad=True)
    value = criterion(logits, targets)
    value.backward()
    assert torch.isfinite(value) and logits.grad is not None and logits.grad.abs().sum() > 0
    own, other = targets[torch.arange(4), labels], targets[torch.arange(4), labels.roll(1)]
    blended = sum(criterion(logits[i:i + 1], labels[i:i + 1]) * own[i]
                  + criterion(logits[i:i + 1], labels.roll(1)[i:i + 1]) * other[i] for i in range(4)) / 4
    assert value.item() == pytest.approx(blended.item(), rel=1e-5)


def test_focal_alpha_needs_one_weight_per_class() -> None:
    config = Config()
    config.training.precision = "fp32"
    config.training.loss, config.training.focal_alpha = "focal", [1.0, 2.0]
    datasets = Datasets(Path("train.beton"), Path("val.beton"), 1000, 10, ["a", "b", "c"])
    with pytest.raises(ConfigError, match="training.focal_alpha: 2 weights, but the datasets have 3 classes"):
        check_run_settings(config, datasets, 1, torch.device("cpu"))
    config.training.focal_alpha = [1.0, 2.0, 0.5]
    check_run_settings(config, datasets, 1, torch.device("cpu"))


def test_focal_alpha_lives_on_the_logits_device() -> None:
    """The trainer builds its criterion on the model's device: alpha is never copied per step. The meta
    device shows where the buffer goes without a GPU; a step on it runs without any host copy."""
    cfg = TrainingConfig(loss="focal", focal_gamma=2.0, focal_alpha=[0.25, 1.0, 2.0])
    criterion = build_criterion(cfg, torch.device("meta"))
    assert criterion.alpha.device.type == "meta"
    loss = criterion(torch.empty(2, 3, device="meta"), torch.zeros(2, dtype=torch.long, device="meta"))
    assert loss.device.type == "meta" and loss.shape == ()
    assert build_criterion(cfg).alpha.device.type == "cpu"  # the default: where CPU training runs

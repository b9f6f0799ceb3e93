"""The training loss, a recipe choice (``training.loss``): ce, bce or focal.

Each takes the model's logits (N, K) and either hard labels (N,) or class
probabilities (N, K), which is what mixup/CutMix hand out (``BatchMixer``).
Label smoothing (``training.label_smoothing``) applies to every loss the way
``nn.CrossEntropyLoss`` applies it: targets become ``(1 - s) * t + s / K``.

- ce: softmax cross-entropy, ``-sum_k t_k log p_k`` (torch's own).
- bce: one sigmoid per class, ``BCE(sigmoid(z_k), t_k)`` averaged over every
  (image, class) element as timm's ``BinaryCrossEntropy`` does, so the ResNet
  strikes back recipes' learning rates carry over; with ``bce_target_threshold``
  the (smoothed, mixed) targets above it become 1 and the rest 0, as in those recipes.
- focal: softmax focal loss (Lin et al. 2017 in its multi-class form, Mukhoti et
  al. 2020 for calibration), ``-sum_k alpha_k t_k (1 - p_k)^gamma log p_k``
  averaged over images; gamma 0 and no alpha is ce.

There is no ``nll``: the model ends in logits, and NLL on their log-softmax is
ce without smoothing (``training.label_smoothing=0``); torch's NLLLoss also
refuses probability targets, so it would not work with mixup/CutMix.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainingConfig

def soft_targets(targets: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """Hard labels (N,) or probabilities (N, K) -> smoothed probabilities (N, K), float32."""
    if targets.dim() == 1:
        targets = F.one_hot(targets, num_classes)
    targets = targets.float()
    return targets * (1.0 - smoothing) + smoothing / num_classes


class BinaryCrossEntropy(nn.Module):
    def __init__(self, smoothing: float = 0.0, target_threshold: float = 0.0):
        super().__init__()
        self.smoothing = smoothing
        self.target_threshold = target_threshold

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        probabilities = soft_targets(targets, logits.shape[1], self.smoothing)
        if self.target_threshold > 0:
            probabilities = (probabilities > self.target_threshold).float()
        return F.binary_cross_entropy_with_logits(logits.float(), probabilities)


class FocalLoss(nn.Module):
    def __init__(self, gamma: float, alpha: list[float] | None = None, smoothing: float = 0.0):
        super().__init__()
        self.gamma = gamma
        self.smoothing = smoothing
        self.register_buffer("alpha", torch.tensor(alpha, dtype=torch.float32) if alpha else None)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        probabilities = soft_targets(targets, logits.shape[1], self.smoothing)
        log_p = F.log_softmax(logits.float(), dim=1)
        per_class = -probabilities * (-torch.expm1(log_p)).pow(self.gamma) * log_p
        if self.alpha is not None:
            per_class = per_class * self.alpha  # on the logits' device: the trainer moves the criterion
        return per_class.sum(dim=1).mean()


def build_criterion(cfg: TrainingConfig, device: torch.device | str = "cpu") -> nn.Module:
    """The recipe's loss on ``device`` (the logits' own: focal_alpha's weights live there rather than
    being copied at every step): called as ``criterion(logits, labels or probabilities)``."""
    if cfg.loss == "ce":
        criterion: nn.Module = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    elif cfg.loss == "bce":
        criterion = BinaryCrossEntropy(cfg.label_smoothing, cfg.bce_target_threshold)
    elif cfg.loss == "focal":
        criterion = FocalLoss(cfg.focal_gamma, cfg.focal_alpha, cfg.label_smoothing)
    else:  # the declaration admits only the three above
        raise ValueError(f"training.loss: unknown loss {cfg.loss!r}")
    return criterion.to(device)

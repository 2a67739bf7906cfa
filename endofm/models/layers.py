"""Small building blocks of the ViTs: stochastic depth, the transformer MLP, QuickGELU and truncated-normal
initialisation. Kept here rather than imported from timm, whose import pulls in torchvision's model zoo
and TorchDynamo (seconds per job process, paid by every fine-tuning and evaluation job).

Layer: data and models (docs/architecture.md). May import: foundation and the other models modules.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class DropPath(nn.Module):
    """Stochastic depth: in training, zero the residual branch of a whole sample with probability
    ``drop_prob`` and scale the kept ones by ``1 / (1 - drop_prob)``; the identity in eval mode."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * (mask.div_(keep) if keep > 0 else mask)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Module):
    """``fc2(act(fc1(x)))``: the transformer block's MLP (parameter names ``fc1``/``fc2``, as timm's and
    the official checkpoints')."""

    def __init__(self, in_features: int, hidden_features: int, act_layer: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``, the activation OpenAI's CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


@torch.no_grad()
def trunc_normal_(
    tensor: torch.Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0
) -> torch.Tensor:
    """Fill ``tensor`` in place with N(mean, std²) truncated to [a, b] (absolute bounds), by the inverse
    CDF: uniform draws between the CDF values of the bounds, mapped through erfinv."""

    def cdf(x: float) -> float:
        return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))

    low, high = cdf((a - mean) / std), cdf((b - mean) / std)
    tensor.uniform_(2 * low - 1, 2 * high - 1).erfinv_()
    return tensor.mul_(std * math.sqrt(2.0)).add_(mean).clamp_(min=a, max=b)

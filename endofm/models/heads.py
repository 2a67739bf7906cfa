"""DINO projection head (docs/original.md §2.3), parameter-compatible with the official ``DINOHead``.

State-dict names are ``mlp.0``/``mlp.2``/``mlp.4`` (``mlp`` for ``nlayers=1``) and, for the
weight-normalised last layer, ``last_layer.parametrizations.weight.original0`` (magnitude, [out, 1])
and ``.original1`` (direction, [out, bottleneck]). Official files use the legacy ``weight_norm``
names ``last_layer.weight_g``/``weight_v``; convert them with
:func:`endofm.models.checkpoint.legacy_to_parametrized`.

Layer: data and models (docs/architecture.md). May import: foundation and the other models modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from endofm.models.layers import trunc_normal_


class DINOHead(nn.Module):
    """MLP (Linear, GELU, ..., Linear to ``bottleneck_dim``, no BatchNorm), L2 normalisation, then a
    weight-normalised bias-free Linear to ``out_dim``. Input (N, in_dim), output (N, out_dim).

    With ``norm_last_layer`` the last layer's magnitude is fixed at 1 (frozen), so its weight rows stay
    unit-norm and the logits are cosine similarities; the official recipe uses it for both networks.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_dim", in_dim),
            ("out_dim", out_dim),
            ("hidden_dim", hidden_dim),
            ("bottleneck_dim", bottleneck_dim),
            ("nlayers", nlayers),
        ):
            if value < 1:
                raise ValueError(f"DINOHead: {name} must be >= 1, got {value}")
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self._init_mlp()
        # Like the original, the last layer keeps PyTorch's default Linear init (only its direction matters).
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(not norm_last_layer)

    @torch.no_grad()
    def _init_mlp(self) -> None:
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(x)


class VideoClassifier(nn.Module):
    """Backbone CLS embedding -> ``head`` Linear(embed_dim, num_classes): the original PolypDiag model
    (``LinearClassifier`` with weights N(0, 0.01), bias 0, on the last block's normalised CLS).

    ``forward`` takes (B, 3, T, H, W) and returns logits (B, num_classes); a (B, K, 3, T, H, W) input
    (K test clips per video) returns the K clips' logits as (B, K, num_classes).
    """

    def __init__(self, backbone: nn.Module, num_classes: int = 2) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"VideoClassifier: num_classes must be >= 2, got {num_classes}")
        self.backbone = backbone
        self.head = nn.Linear(backbone.embed_dim, num_classes)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if video.ndim == 6:
            b, k = video.shape[:2]
            return self.head(self.backbone(video.flatten(0, 1))).view(b, k, -1)
        return self.head(self.backbone(video))

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

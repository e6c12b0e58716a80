"""1-D ConvNeXt-V2 ECG encoder (the paper's "1D modified ConvNeXt v2").

ConvNeXt-V2 (Woo et al. 2023) with every 2-D op made 1-D over time: a patchify stem
(Conv1d kernel = stride = ``patch_size``), four stages of blocks (depthwise Conv1d k=7,
channels-last LayerNorm, Linear 4x inverted bottleneck, GELU, GRN over the time axis, Linear,
drop path) and LN + Conv1d(k=2, s=2) downsampling between stages. The encoder returns both the
pooled embedding (global average pool + LN), used for the contrastive loss and downstream
probes, and the final-stage token sequence, which the caption decoder cross-attends to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from esi.model.config import checked


@dataclass
class ECGEncoderConfig:
    """Architecture of the 1-D ConvNeXt-V2; see esi/configs/README.md for the named sizes."""

    # ranges are enforced by esi.model.config.from_dict (the loaded config), naming the dotted key
    in_channels: int = checked(12, ge=1)
    patch_size: int = checked(4, ge=1)
    depths: list[int] = checked(default_factory=lambda: [3, 3, 9, 3], ge=1, min_len=1)
    dims: list[int] = checked(default_factory=lambda: [96, 192, 384, 768], ge=1, min_len=1)
    drop_path_rate: float = checked(0.1, ge=0.0, lt=1.0)
    kernel_size: int = checked(7, ge=1)

    def __post_init__(self) -> None:
        if len(self.depths) != len(self.dims) or not self.depths:
            raise ValueError(f"ecg.depths {self.depths} and ecg.dims {self.dims} must be non-empty and equal length")
        if self.patch_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError("ecg.patch_size must be >= 1 and ecg.kernel_size odd")

    @property
    def width(self) -> int:
        return self.dims[-1]

    @property
    def total_stride(self) -> int:
        return self.patch_size * 2 ** (len(self.dims) - 1)


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over channels for (B, C, T) tensors (stem and downsampling layers)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class GRN(nn.Module):
    """Global Response Normalisation over the time axis, for channels-last (B, T, C) input."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, channels))
        self.beta = nn.Parameter(torch.zeros(1, 1, channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        global_norm = torch.linalg.vector_norm(x, ord=2, dim=1, keepdim=True)  # (B, 1, C)
        normalised = global_norm / (global_norm.mean(dim=-1, keepdim=True) + self.eps)
        return self.gamma * (x * normalised) + self.beta + x


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample while training."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class ConvNeXtV2Block(nn.Module):
    def __init__(self, dim: int, drop_path: float, kernel_size: int = 7):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        x = self.dwconv(x).transpose(1, 2)  # (B, C, T) -> (B, T, C)
        x = self.pwconv2(self.grn(self.act(self.pwconv1(self.norm(x)))))
        return residual + self.drop_path(x.transpose(1, 2))


class ConvNeXtV2ECG(nn.Module):
    """Input (B, in_channels, T); output ``(pooled (B, D), tokens (B, L, D))`` with D = dims[-1].

    T need not be a multiple of the total stride; the tail that does not fill a patch is dropped
    by the strided convolutions (L = T // total_stride for T divisible by it).
    """

    def __init__(self, config: ECGEncoderConfig):
        super().__init__()
        self.config = config
        dims, depths = config.dims, config.depths
        self.downsample_layers = nn.ModuleList([
            nn.Sequential(
                nn.Conv1d(config.in_channels, dims[0], kernel_size=config.patch_size, stride=config.patch_size),
                ChannelsFirstLayerNorm(dims[0]),
            )
        ])
        for i in range(len(dims) - 1):
            self.downsample_layers.append(nn.Sequential(
                ChannelsFirstLayerNorm(dims[i]), nn.Conv1d(dims[i], dims[i + 1], kernel_size=2, stride=2),
            ))
        total = sum(depths)
        rates = [config.drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # linear, like timm
        self.stages = nn.ModuleList()
        start = 0
        for dim, depth in zip(dims, depths):
            self.stages.append(nn.Sequential(*[
                ConvNeXtV2Block(dim, rates[start + j], config.kernel_size) for j in range(depth)
            ]))
            start += depth
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)  # pooled embedding
        self.token_norm = nn.LayerNorm(dims[-1], eps=1e-6)  # token sequence for cross-attention
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv1d, nn.Linear)):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    @property
    def width(self) -> int:
        return self.config.width

    def forward(self, signals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if signals.ndim != 3 or signals.shape[1] != self.config.in_channels:
            raise ValueError(f"expected signals of shape (B, {self.config.in_channels}, T), got {tuple(signals.shape)}")
        if signals.shape[-1] < self.config.total_stride:
            raise ValueError(f"signal length {signals.shape[-1]} is shorter than the encoder stride "
                             f"{self.config.total_stride}")
        x = signals
        for downsample, stage in zip(self.downsample_layers, self.stages):
            x = stage(downsample(x))
        pooled = self.norm(x.mean(dim=-1))
        tokens = self.token_norm(x.transpose(1, 2))
        return pooled, tokens


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


"""A small 2-D U-Net: brightfield z-planes in (one input channel per plane), nucleus logits out.

The paper (Fishman et al. 2021) used a standard U-Net; here depth and width are parameters so the
shipped model stays small enough to segment a 1024 x 1344 field in under 2 s on a laptop CPU.
Output channel 0 is the nucleus logit; an optional channel 1 is a nucleus-boundary logit that can
help split touching nuclei.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the U-Net; saved in the model card so the weights can be rebuilt."""

    in_channels: int = 1
    out_channels: int = 1
    width: int = 16
    depth: int = 3

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 conv + batch norm + ReLU blocks, the U-Net's basic unit."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net with ``depth`` poolings; channels double per level from ``width``.

    Input height and width must be multiples of ``2 ** depth`` (:func:`pad_to_multiple` helps).
    """

    def __init__(self, config: UNetConfig = UNetConfig()) -> None:
        super().__init__()
        if config.depth < 1 or config.width < 1 or config.in_channels < 1 or config.out_channels < 1:
            raise ValueError(f"invalid U-Net configuration {config}")
        self.config = config
        widths = [config.width * 2**level for level in range(config.depth + 1)]
        self.down = nn.ModuleList()
        c_in = config.in_channels
        for w in widths:
            self.down.append(_double_conv(c_in, w))
            c_in = w
        self.up = nn.ModuleList()
        self.reduce = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.reduce.append(nn.Conv2d(c_in, w, 1))
            self.up.append(_double_conv(2 * w, w))
            c_in = w
        self.head = nn.Conv2d(c_in, config.out_channels, 1)

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this."""
        return 2**self.config.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, out_channels, H, W) for input (N, in_channels, H, W)."""
        skips = []
        for level, block in enumerate(self.down):
            if level:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        skips.pop()
        for reduce, block in zip(self.reduce, self.up):
            skip = skips.pop()
            x = F.interpolate(reduce(x), size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad the last two axes up to multiples of ``multiple``; returns the tensor and (H, W)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

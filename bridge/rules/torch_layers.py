"""Torch modules that compute exactly what a Flax layer computes where no stock torch module does.

``FlaxConv1d``/``FlaxConv2d`` are ``torch.nn.Conv1d``/``Conv2d`` (same ``weight``/``bias``, so
state dicts stay standard) that pad the way XLA does and may take channels-last input, as Flax
does. XLA's 'SAME' pads ``total // 2`` before and the rest after: with stride 2 that is
asymmetric, which torch's symmetric ``padding=`` cannot express, so the padding is applied with
``F.pad`` and the convolution itself runs with ``padding=0``. Pure torch: no JAX import.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.nn import functional

Padding = str | tuple[tuple[int, int], ...]


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """XLA's 'SAME' padding of one spatial axis: ``(low, high)`` with ``low = total // 2``."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class _FlaxPadding:
    """Shared forward of the Flax-compatible convolutions (a mixin over ``torch.nn.Conv*d``)."""

    flax_padding: Padding
    channels_last: bool
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        *,
        flax_padding: Padding,
        channels_last: bool = True,
        **conv_options: Any,
    ) -> None:
        """The arguments of ``torch.nn.Conv*d`` but ``padding``, which ``flax_padding`` replaces
        ('SAME', 'VALID', or one ``(low, high)`` pair per spatial axis)."""
        super().__init__(in_channels, out_channels, kernel_size, padding=0, **conv_options)  # type: ignore[call-arg]
        self.flax_padding, self.channels_last = flax_padding, channels_last

    def _pads(self, spatial: Sequence[int]) -> list[int]:
        if self.flax_padding == "SAME":
            pairs = [
                same_padding(n, k, s, d)
                for n, k, s, d in zip(spatial, self.kernel_size, self.stride, self.dilation, strict=True)
            ]
        elif self.flax_padding == "VALID":
            pairs = [(0, 0)] * len(spatial)
        else:
            pairs = list(self.flax_padding)  # type: ignore[arg-type]
        return [p for low, high in reversed(pairs) for p in (low, high)]  # pad's order: last axis first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == len(self.kernel_size) + 1:  # one unbatched example, as Flax's Conv and torch's take it
            return self.forward(x[None])[0]
        if self.channels_last:
            x = x.movedim(-1, 1)
        x = functional.pad(x, self._pads(x.shape[2:]))
        y = self._conv_forward(x, self.weight, self.bias)  # type: ignore[attr-defined]
        return y.movedim(1, -1) if self.channels_last else y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, flax_padding={self.flax_padding!r}, channels_last={self.channels_last}"  # type: ignore[misc]


class FlaxConv1d(_FlaxPadding, torch.nn.Conv1d):
    """``torch.nn.Conv1d`` with XLA padding; input ``(N, L, C)`` when ``channels_last`` (Flax's), else ``(N, C, L)``."""


class FlaxConv2d(_FlaxPadding, torch.nn.Conv2d):
    """``torch.nn.Conv2d`` with XLA padding; input ``(N, H, W, C)`` when ``channels_last`` (Flax's), else NCHW."""


class FlaxGroupNorm(torch.nn.GroupNorm):
    """``torch.nn.GroupNorm`` over the last axis (Flax's channels-last layout) when ``channels_last``."""

    def __init__(self, num_groups: int, num_channels: int, *, channels_last: bool = True, **options: Any) -> None:
        super().__init__(num_groups, num_channels, **options)
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.channels_last or x.ndim == 2:
            return super().forward(x)
        return super().forward(x.movedim(-1, 1)).movedim(1, -1)


class ChannelsFirstFlatten(torch.nn.Flatten):
    """``torch.nn.Flatten()`` of a channels-first input ``(N, C, spatial...)`` in Flax's order: the
    channels are moved last first, so the Linear after it takes the Flax Dense's weights unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1))


class FlaxPool(torch.nn.Module):
    """``nn.max_pool`` / ``nn.avg_pool`` as Flax computes them, 1-D or 2-D: XLA's 'SAME' padding (``total // 2``
    low), padded with -inf for max and zeros for average; ``count_include_pad=False`` divides each window by
    the count of its real elements. Input ``(N, *spatial, C)`` when ``channels_last`` (Flax's), else NC..."""

    def __init__(
        self,
        kind: str,
        window: Sequence[int],
        strides: Sequence[int],
        padding: Padding,
        *,
        count_include_pad: bool = True,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        if kind not in ("max", "avg"):
            raise ValueError(f"kind must be 'max' or 'avg', got {kind!r}")
        self.kind, self.window, self.strides = kind, tuple(window), tuple(strides)
        self.padding, self.count_include_pad, self.channels_last = padding, count_include_pad, channels_last

    def _pads(self, spatial: Sequence[int]) -> list[int]:
        if self.padding == "SAME":
            pairs = [same_padding(n, k, s, 1) for n, k, s in zip(spatial, self.window, self.strides, strict=True)]
        elif self.padding == "VALID":
            pairs = [(0, 0)] * len(spatial)
        else:
            pairs = list(self.padding)  # type: ignore[arg-type]
        return [p for low, high in reversed(pairs) for p in (low, high)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.movedim(-1, 1)
        pads = self._pads(x.shape[2:])
        two_d = len(self.window) == 2
        if self.kind == "max":
            maximum: Any = functional.max_pool2d if two_d else functional.max_pool1d
            y = maximum(functional.pad(x, pads, value=-math.inf), self.window, self.strides)
        else:
            average: Any = functional.avg_pool2d if two_d else functional.avg_pool1d
            y = average(functional.pad(x, pads), self.window, self.strides)
            if not self.count_include_pad and any(pads):
                ones = functional.pad(torch.ones_like(x[:1, :1]), pads)
                y = y / average(ones, self.window, self.strides)
        return y.movedim(1, -1) if self.channels_last else y

    def extra_repr(self) -> str:
        return (
            f"{self.kind!r}, window={self.window}, strides={self.strides}, padding={self.padding!r}, "
            f"count_include_pad={self.count_include_pad}, channels_last={self.channels_last}"
        )


class FlaxMaxPool(FlaxPool):
    """``nn.max_pool`` (see ``FlaxPool``)."""

    def __init__(self, window: Sequence[int], strides: Sequence[int], padding: Padding, **options: Any) -> None:
        super().__init__("max", window, strides, padding, **options)


class FlaxAvgPool(FlaxPool):
    """``nn.avg_pool`` (see ``FlaxPool``)."""

    def __init__(self, window: Sequence[int], strides: Sequence[int], padding: Padding, **options: Any) -> None:
        super().__init__("avg", window, strides, padding, **options)

"""GroupNorm that leaves channels-last activations channels-last (on CUDA, through Triton).

Why: PyTorch's CUDA GroupNorm takes contiguous (NCHW) input only. In a channels-last UNet (the
layout an H100's convolutions want) every GroupNorm's input was thus copied to NCHW, and the
convolution after it copied the result back, forward and backward: ~2.7 ms of copies in a
32.5 ms full training step (bench/step_profile.txt, "copies and adds by origin"). These
kernels (training.groupnorm_kernels) read and write channels-last memory as it is.

The math is torch's GroupNorm: float32 statistics, the biased variance, eps under the square
root, then the per-channel weight and bias. Anywhere else (CPU, NCHW input, autocast, no
Triton) the module is torch's own GroupNorm.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass

import torch

BLOCK = 2048  # elements a group program sums per iteration
TILE_HW, TILE_C = 64, 64  # a tile program's pixels and channels (SD's widths are multiples of 64)
GROUP_PROGRAMS = 512  # enough programs to fill an H100's 132 multiprocessors at batch 1
MAX_SPLITS = 16  # each tile program adds up this many partial sums per group


class ChannelsLastGroupNorm(torch.nn.GroupNorm):
    """torch.nn.GroupNorm (same parameters, same state dict) that runs channels-last input
    on the GPU without converting it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if runs_in_kernels(x, self):
            return GroupNormFunction.apply(x, self.weight, self.bias, self.num_groups, self.eps)
        return super().forward(x)


def channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """The model (changed in place) in channels-last memory, with GroupNorms that keep it so."""
    model.to(memory_format=torch.channels_last)
    for module in model.modules():
        if type(module) is torch.nn.GroupNorm:
            module.__class__ = ChannelsLastGroupNorm
    return model


def runs_in_kernels(x: torch.Tensor, norm: torch.nn.GroupNorm) -> bool:
    return (
        x.is_cuda
        and x.dim() == 4
        and norm.affine
        and x.dtype == norm.weight.dtype
        and x.is_contiguous(memory_format=torch.channels_last)
        and not torch.is_autocast_enabled("cuda")  # autocast runs GroupNorm in float32: torch's
        and has_triton()
    )


@functools.cache
def has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


@dataclass(frozen=True)
class Plan:
    """How one call splits its work: each (image, group)'s H*W*C/G elements are summed by
    ``splits`` programs of ``per`` elements each."""

    images: int
    channels: int
    pixels: int
    groups: int
    splits: int
    per: int

    @classmethod
    def of(cls, x: torch.Tensor, groups: int) -> Plan:
        images, channels, height, width = x.shape
        size = height * width * (channels // groups)
        wanted = -(-GROUP_PROGRAMS // (images * groups))
        splits = max(1, min(MAX_SPLITS, wanted, -(-size // BLOCK)))
        return cls(images, channels, height * width, groups, splits, -(-size // splits))

    @property
    def width(self) -> int:  # channels per group
        return self.channels // self.groups

    @property
    def group_grid(self) -> tuple[int, int]:
        return (self.images * self.groups, self.splits)

    @property
    def pixel_tiles(self) -> int:
        return -(-self.pixels // TILE_HW)

    @property
    def tile_grid(self) -> tuple[int, int, int]:
        return (self.images, self.pixel_tiles, -(-self.channels // TILE_C))


class GroupNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int, eps: float):
        from herdbook.training import groupnorm_kernels as kernels

        plan = Plan.of(x, groups)
        sums = torch.empty(plan.images * groups, plan.splits, 2, device=x.device, dtype=torch.float32)
        kernels.group_sums[plan.group_grid](
            x, sums, plan.pixels, plan.channels, plan.width, plan.per, plan.splits, BLOCK=BLOCK
        )
        y = torch.empty_like(x)  # channels-last, like x
        kernels.normalize[plan.tile_grid](
            x, y, weight, bias, sums, plan.pixels, plan.channels, plan.width, plan.splits, eps,
            BLOCK_HW=TILE_HW, BLOCK_C=TILE_C,
        )  # fmt: skip
        ctx.save_for_backward(x, weight, sums)
        ctx.plan, ctx.eps = plan, eps
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        from herdbook.training import groupnorm_kernels as kernels

        x, weight, sums = ctx.saved_tensors
        plan: Plan = ctx.plan
        dy = dy.contiguous(memory_format=torch.channels_last)
        dsums = torch.empty_like(sums)
        kernels.grad_sums[plan.group_grid](
            x, dy, weight, sums, dsums, plan.pixels, plan.channels, plan.width, plan.per, plan.splits, ctx.eps,
            BLOCK=BLOCK,
        )  # fmt: skip
        dx = torch.empty_like(x)
        channel_sums = torch.empty(
            2, plan.images * plan.pixel_tiles, plan.channels, device=x.device, dtype=torch.float32
        )
        kernels.grad_input[plan.tile_grid](
            x, dy, dx, weight, sums, dsums, channel_sums, plan.pixels, plan.channels, plan.width, plan.splits,
            plan.pixel_tiles, ctx.eps, BLOCK_HW=TILE_HW, BLOCK_C=TILE_C,
        )  # fmt: skip
        dweight = dbias = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            dweight, dbias = channel_sums.sum(1).to(weight.dtype)
        return dx, dweight, dbias, None, None

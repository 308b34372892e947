"""The UNet's layers made faster on CUDA by Triton kernels (training.kernels), for training
and sampling alike. `fast_layers(model)` puts a model in channels-last memory and swaps:

- GroupNorm for one that leaves channels-last activations channels-last. PyTorch's CUDA
  GroupNorm takes contiguous (NCHW) input only, so in a channels-last UNet (the layout an
  H100's convolutions want) every GroupNorm's input was copied to NCHW and the convolution
  after it copied the result back, forward and backward: ~2.7 ms of copies in a 32.5 ms full
  training step (bench/step_profile.txt, "copies and adds by origin"). The math is torch's:
  float32 statistics, the biased variance, eps under the square root, weight and bias.
- diffusers' GEGLU (value * gelu(gate), both halves of one projection) for one kernel each
  way: torch ran the GELU and the product on strided halves (slow, unvectorised kernels) and
  copied the two halves' gradients back together.
- diffusers' Transformer2DModel and ResnetBlock2D for versions that leave channels-last
  activations as they are: both copied a tensor to NCHW (`.contiguous()`) just before a 1x1
  convolution, which copied it back to channels-last, forward and backward (16 transformers'
  outputs; the shortcut of every ResNet block whose width changes, while training).

Anywhere else (CPU, unsuited input, autocast, no Triton) each layer runs as torch's own.
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
GEGLU_TILE = (8, 256)  # a GEGLU program's rows and columns of output


class ChannelsLastGroupNorm(torch.nn.GroupNorm):
    """torch.nn.GroupNorm (same parameters, same state dict) that runs channels-last input
    on the GPU without converting it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if runs_in_kernels(x, self):
            return GroupNormFunction.apply(x, self.weight, self.bias, self.num_groups, self.eps)
        return super().forward(x)


class FusedGEGLU(torch.nn.Module):
    """diffusers' GEGLU (same ``proj``, same state dict): the projection, then
    value * gelu(gate) over its two halves, in one kernel on the GPU."""

    proj: torch.nn.Linear

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        projected = self.proj(hidden_states)
        if on_gpu_with_triton(projected) and projected.is_contiguous():
            return GegluFunction.apply(projected)
        value, gate = projected.chunk(2, dim=-1)
        return value * torch.nn.functional.gelu(gate)


class ChannelsLastTransformerOutput:
    """For diffusers' Transformer2DModel: its output as diffusers computes it, without the
    NCHW copy. The tokens (batch, height*width, channels) permuted back to (batch, channels,
    height, width) are a channels-last tensor already."""

    def _get_output_for_continuous_inputs(self, hidden_states, residual, batch_size, height, width, inner_dim):
        if not self.use_linear_projection:
            hidden_states = self.proj_out(
                hidden_states.reshape(batch_size, height, width, inner_dim).permute(0, 3, 1, 2)
            )
        else:
            hidden_states = (
                self.proj_out(hidden_states).reshape(batch_size, height, width, inner_dim).permute(0, 3, 1, 2)
            )
        return hidden_states + residual


class ChannelsLastShortcut:
    """For diffusers' ResnetBlock2D: its forward, without the NCHW copy of the shortcut's
    input that diffusers makes only while training (for DDP's gradient strides, not its math).
    The block reads ``self.training`` for that alone; dropout is a module of its own."""

    def forward(self, input_tensor, temb, *args, **kwargs):
        training, self.training = self.training, False
        try:
            return super().forward(input_tensor, temb, *args, **kwargs)
        finally:
            self.training = training


def fast_layers(model: torch.nn.Module) -> torch.nn.Module:
    """The model (changed in place) in channels-last memory, its GroupNorms, GEGLUs,
    transformers and ResNet blocks swapped for the ones above (same parameters: only the
    class changes)."""
    from diffusers.models.activations import GEGLU
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    swaps = {
        torch.nn.GroupNorm: ChannelsLastGroupNorm,
        GEGLU: FusedGEGLU,
        Transformer2DModel: with_mixin(Transformer2DModel, ChannelsLastTransformerOutput),
        ResnetBlock2D: with_mixin(ResnetBlock2D, ChannelsLastShortcut),
    }
    model.to(memory_format=torch.channels_last)
    for module in model.modules():
        if type(module) in swaps:
            module.__class__ = swaps[type(module)]
    return model


@functools.cache
def with_mixin(base: type, mixin: type) -> type:
    """``base`` with ``mixin``'s methods first, one class per pair. It keeps the base's name:
    diffusers writes a model's class name into the config it saves."""
    return type(base.__name__, (mixin, base), {})


def on_gpu_with_triton(x: torch.Tensor) -> bool:
    # autocast runs these layers' ops in float32 (GroupNorm) or casts their inputs: torch's way
    return x.is_cuda and not torch.is_autocast_enabled("cuda") and has_triton()


def runs_in_kernels(x: torch.Tensor, norm: torch.nn.GroupNorm) -> bool:
    return (
        on_gpu_with_triton(x)
        and x.dim() == 4
        and norm.affine
        and x.dtype == norm.weight.dtype
        and x.is_contiguous(memory_format=torch.channels_last)
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
        from herdbook.training import kernels

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
        from herdbook.training import kernels

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


class GegluFunction(torch.autograd.Function):
    """value * gelu(gate) (erf GELU) for the two halves of the last dimension, in float32 and
    rounded once; the backward writes both halves' gradients into one tensor."""

    @staticmethod
    def forward(ctx, projected: torch.Tensor) -> torch.Tensor:
        from herdbook.training import kernels

        width = projected.shape[-1] // 2
        out = projected.new_empty((*projected.shape[:-1], width))
        rows = out.numel() // width
        kernels.geglu[geglu_grid(rows, width)](projected, out, rows, width, *GEGLU_TILE)
        ctx.save_for_backward(projected)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        from herdbook.training import kernels

        (projected,) = ctx.saved_tensors
        grad = grad.contiguous()
        dprojected = torch.empty_like(projected)
        width = projected.shape[-1] // 2
        rows = grad.numel() // width
        kernels.geglu_grad[geglu_grid(rows, width)](projected, grad, dprojected, rows, width, *GEGLU_TILE)
        return dprojected


def geglu_grid(rows: int, width: int) -> tuple[int, int]:
    return (-(-rows // GEGLU_TILE[0]), -(-width // GEGLU_TILE[1]))

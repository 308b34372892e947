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
- Conv2d for one whose bias, when sampling, is added by a kernel in 16-byte vectors: torch
  adds it after cuDNN's convolution as a broadcast, which runs unvectorised on channels-last
  output (~6.5 of 35 ms decoding 4 images, ~1.6 of 25.5 ms a sampling UNet call, with the
  time embedding's adds).
- diffusers' Transformer2DModel and ResnetBlock2D for versions that leave channels-last
  activations as they are: both copied a tensor to NCHW (`.contiguous()`) just before a 1x1
  convolution, which copied it back to channels-last, forward and backward (16 transformers'
  outputs; the shortcut of every ResNet block whose width changes, while training).

And for sampling, `SamplingAttention`: diffusers' attention with a kernel of its own for narrow
heads (set by training.components.sampling_pipeline).

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
BIAS_TILE = (64, 64)  # a bias program's rows (pixels) and channels
# an attention program's queries and keys per step, and its launch (bench/attention_kernel.txt)
ATTENTION_TILE = {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3}
ATTENTION_WIDTHS = 64  # heads this wide or narrower (SD's first level: 40)


class ChannelsLastGroupNorm(torch.nn.GroupNorm):
    """torch.nn.GroupNorm (same parameters, same state dict) that runs channels-last input
    on the GPU without converting it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if runs_in_kernels(x, self):
            return GroupNormFunction.apply(x, self.weight, self.bias, self.num_groups, self.eps)
        return super().forward(x)


class ChannelsLastConv2d(torch.nn.Conv2d):
    """torch.nn.Conv2d (same parameters, same state dict) whose bias, without gradients (when
    sampling), a kernel adds to cuDNN's channels-last output in place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None or torch.is_grad_enabled() or not on_gpu_with_triton(x):
            return super().forward(x)
        out = self._conv_forward(x, self.weight, None)
        if (
            not out.is_contiguous(memory_format=torch.channels_last)
            or out.shape[1] % 16
            or out.dtype != self.bias.dtype
        ):
            return out.add_(self.bias.view(1, -1, 1, 1))  # torch's own way, as Conv2d adds it
        return add_bias_(out, self.bias)


def add_bias_(out: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``out`` (channels-last, N x C x H x W) plus ``bias`` per channel, in place."""
    from herdbook.training import kernels

    channels = out.shape[1]
    rows = out.numel() // channels
    grid = (-(-rows // BIAS_TILE[0]), -(-channels // BIAS_TILE[1]))
    kernels.add_bias[grid](out, bias, rows, channels, *BIAS_TILE)
    return out


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


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, **tile) -> torch.Tensor:
    """softmax(q k^T / sqrt(width)) v per head, as torch's scaled_dot_product_attention, over
    diffusers' projections as they are: (batch, tokens, heads * width), each head's features
    side by side in a token's row. The result has that layout too."""
    import math

    from herdbook.training import kernels

    batch, queries, inner = q.shape
    width = inner // heads
    tile = {**ATTENTION_TILE, **tile}
    out = q.new_empty(batch, queries, inner)
    grid = (-(-queries // tile["BLOCK_M"]), batch * heads)
    kernels.attention[grid](
        q, k, v, out, queries, k.shape[1], heads, q.stride(1), k.stride(1), v.stride(1), out.stride(1),
        math.log2(math.e) / math.sqrt(width), D=width, BLOCK_D=max(16, next_power_of_2(width)), **tile,
    )  # fmt: skip
    return out


class SamplingAttention:
    """diffusers' attention (AttnProcessor2_0's math) with ``attention`` above for narrow heads
    when nothing needs gradients: in SD-1.5's first-level transformers at 4 images with
    guidance they took ~5.7 of the UNet call's 6.5 ms of attention with flash, which pads
    40-wide heads to 64 and misses the H100's newer matrix instructions; ~4.1 ms with this
    kernel (bench/step_profile.txt, run 9). Any other call (masks, norms, gradients, wider
    heads, no GPU) is diffusers' own processor's."""

    def __init__(self) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.fallback = AttnProcessor2_0()

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs
    ):
        if args or kwargs or not self.takes(attn, hidden_states, attention_mask, temb):
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query, key, value = (x.contiguous() for x in (attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)))
        out = attn.to_out[1](attn.to_out[0](attention(query, key, value, attn.heads)))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor

    @staticmethod
    def takes(attn, hidden_states, attention_mask, temb) -> bool:
        plain = (
            hidden_states.dim() == 3
            and attention_mask is None
            and temb is None
            and attn.spatial_norm is None
            and attn.group_norm is None
            and attn.norm_q is None
            and attn.norm_k is None
            and not attn.norm_cross
            and getattr(attn, "inner_kv_dim", attn.inner_dim) == attn.inner_dim
        )
        return (
            plain
            and not torch.is_grad_enabled()
            and on_gpu_with_triton(hidden_states)
            and hidden_states.dtype in (torch.float16, torch.bfloat16)
            and attn.inner_dim // attn.heads <= ATTENTION_WIDTHS
        )


def next_power_of_2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def fast_layers(model: torch.nn.Module) -> torch.nn.Module:
    """The model (changed in place) in channels-last memory, its convolutions, GroupNorms,
    GEGLUs, transformers and ResNet blocks swapped for the ones above (same parameters: only the
    class changes)."""
    from diffusers.models.activations import GEGLU
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    swaps = {
        torch.nn.Conv2d: ChannelsLastConv2d,
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

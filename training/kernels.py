"""The Triton kernels behind training.layers, forward and backward: GroupNorm over
channels-last (N, H, W, C) memory, and GEGLU; a convolution's bias (sampling); and behind training.masters: the optimizer step
over flat buffers, reading gradients in place.

GroupNorm has two kinds of program. A *group* program sums one slice of one (image, group)'s elements, taken
as a flat run of H*W rows of C/G consecutive channels, so any group width fills every lane and
one compiled kernel serves all of a UNet's shapes. A *tile* program normalises (or
differentiates) a dense [rows, 64 channels] tile, finding each column's group statistics from
the group programs' partial sums. Integer sizes are not specialised (but for the tile programs'
channel count, on being a multiple of 16): a new shape does not compile again.
"""

from __future__ import annotations

import triton
import triton.language as tl

SIZES = ["HW", "C", "CG", "PER", "SPLITS"]
# the tile programs' C is left to specialise: a multiple of 16 (every SD width) lets their loads
# and stores along channels be 16-byte vectors, and one compile still serves all such widths
TILE_SIZES = ["HW", "CG", "SPLITS"]


@triton.jit
def _split_sums(sums, row, SPLITS):
    """The two sums of group ``row`` (a scalar or a vector of rows), over its splits."""
    first = tl.load(sums + row * SPLITS * 2)
    second = tl.load(sums + row * SPLITS * 2 + 1)
    for split in range(1, SPLITS):
        first += tl.load(sums + (row * SPLITS + split) * 2)
        second += tl.load(sums + (row * SPLITS + split) * 2 + 1)
    return first, second


@triton.jit
def _mean_rstd(sums, row, SPLITS, count, eps):
    total, squares = _split_sums(sums, row, SPLITS)
    mean = total / count
    var = tl.maximum(squares / count - mean * mean, 0.0)
    return mean, 1.0 / tl.sqrt(var + eps)


@triton.jit
def _group_elements(HW, C, CG, PER):
    """This program's (image, group, split): the base pointer's offset, its group's first
    channel, the flat range [start, stop) of the group's elements, and the group row."""
    row = tl.program_id(0)
    split = tl.program_id(1)
    groups = C // CG
    image = row // groups
    first_channel = (row % groups) * CG
    base = image.to(tl.int64) * HW * C + first_channel
    start = split * PER
    stop = tl.minimum(start + PER, HW * CG)
    return row, split, base, first_channel, start, stop


@triton.jit
def _group_block(offset, stop, base, C, CG, BLOCK: tl.constexpr):
    """One block of a group's flat elements from ``offset``: where they are, which are inside
    the range, and each one's channel within the group."""
    element = offset + tl.arange(0, BLOCK)
    pixel = element // CG
    channel = element - pixel * CG
    return base + pixel * C + channel, element < stop, channel


@triton.jit(do_not_specialize=SIZES)
def group_sums(x, sums, HW, C, CG, PER, SPLITS, BLOCK: tl.constexpr):
    """Per (group, split): the sum and the sum of squares of its elements, in float32."""
    row, split, base, _, start, stop = _group_elements(HW, C, CG, PER)
    total = tl.zeros([BLOCK], tl.float32)
    squares = tl.zeros([BLOCK], tl.float32)
    for offset in range(start, stop, BLOCK):
        # not "_": that name holds a scalar above, and Triton keeps a loop variable's type
        at, inside, _channel = _group_block(offset, stop, base, C, CG, BLOCK)
        value = tl.load(x + at, mask=inside, other=0.0).to(tl.float32)
        total += value
        squares += value * value
    out = sums + (row * SPLITS + split) * 2
    tl.store(out, tl.sum(total, axis=0))
    tl.store(out + 1, tl.sum(squares, axis=0))


@triton.jit(do_not_specialize=SIZES)
def grad_sums(x, dy, weight, sums, dsums, HW, C, CG, PER, SPLITS, eps, BLOCK: tl.constexpr):
    """Per (group, split): the sums of dy*w and of dy*w*x_hat that the input's gradient needs."""
    row, split, base, first_channel, start, stop = _group_elements(HW, C, CG, PER)
    mean, rstd = _mean_rstd(sums, row, SPLITS, HW * CG, eps)
    total = tl.zeros([BLOCK], tl.float32)
    weighted = tl.zeros([BLOCK], tl.float32)
    for offset in range(start, stop, BLOCK):
        at, inside, channel = _group_block(offset, stop, base, C, CG, BLOCK)
        value = tl.load(x + at, mask=inside, other=0.0).to(tl.float32)
        grad = tl.load(dy + at, mask=inside, other=0.0).to(tl.float32)
        grad = grad * tl.load(weight + first_channel + channel, mask=inside, other=0.0).to(tl.float32)
        total += grad
        weighted += grad * (value - mean) * rstd
    out = dsums + (row * SPLITS + split) * 2
    tl.store(out, tl.sum(total, axis=0))
    tl.store(out + 1, tl.sum(weighted, axis=0))


@triton.jit
def _tile(HW, C, CG, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    """This tile program's image, element offsets and mask, channels and their group rows."""
    image = tl.program_id(0)
    pixels = tl.program_id(1) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    channels = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    in_channels = channels < C
    at = image.to(tl.int64) * HW * C + pixels[:, None] * C + channels[None, :]
    inside = (pixels[:, None] < HW) & in_channels[None, :]
    rows = image * (C // CG) + tl.where(in_channels, channels, 0) // CG
    return image, at, inside, channels, in_channels, rows


@triton.jit(do_not_specialize=TILE_SIZES)
def normalize(x, y, weight, bias, sums, HW, C, CG, SPLITS, eps, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    """y = (x - mean) * rstd * w + b over one tile."""
    _, at, inside, channels, in_channels, rows = _tile(HW, C, CG, BLOCK_HW, BLOCK_C)
    mean, rstd = _mean_rstd(sums, rows, SPLITS, HW * CG, eps)
    w = tl.load(weight + channels, mask=in_channels, other=0.0).to(tl.float32)
    b = tl.load(bias + channels, mask=in_channels, other=0.0).to(tl.float32)
    value = tl.load(x + at, mask=inside, other=0.0).to(tl.float32)
    out = (value - mean[None, :]) * (rstd * w)[None, :] + b[None, :]
    tl.store(y + at, out.to(y.dtype.element_ty, fp_downcast_rounding="rtne"), mask=inside)


@triton.jit(do_not_specialize=[*TILE_SIZES, "TILES"])
def grad_input(
    x, dy, dx, weight, sums, dsums, channel_sums, HW, C, CG, SPLITS, TILES, eps,
    BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """dx = rstd * (dy*w - mean(dy*w) - x_hat * mean(dy*w*x_hat)) over one tile, and the tile's
    column sums of dy*x_hat and dy (the weight's and bias's gradients, once summed over tiles)."""
    image, at, inside, channels, in_channels, rows = _tile(HW, C, CG, BLOCK_HW, BLOCK_C)
    count = HW * CG
    mean, rstd = _mean_rstd(sums, rows, SPLITS, count, eps)
    total, weighted = _split_sums(dsums, rows, SPLITS)
    w = tl.load(weight + channels, mask=in_channels, other=0.0).to(tl.float32)
    value = tl.load(x + at, mask=inside, other=0.0).to(tl.float32)
    grad = tl.load(dy + at, mask=inside, other=0.0).to(tl.float32)
    x_hat = tl.where(inside, (value - mean[None, :]) * rstd[None, :], 0.0)
    out = rstd[None, :] * (grad * w[None, :] - (total / count)[None, :] - x_hat * (weighted / count)[None, :])
    tl.store(dx + at, out.to(dx.dtype.element_ty, fp_downcast_rounding="rtne"), mask=inside)
    tile = image * TILES + tl.program_id(1)
    sums_at = channel_sums + tile.to(tl.int64) * C + channels
    tl.store(sums_at, tl.sum(grad * x_hat, axis=0), mask=in_channels)
    plane = tl.num_programs(0) * TILES * C  # the bias's sums follow the weight's
    tl.store(sums_at + plane, tl.sum(grad, axis=0), mask=in_channels)


@triton.jit
def _gelu_parts(gate):
    """The erf GELU's cumulative and density terms at ``gate`` (float32)."""
    cdf = 0.5 * (1.0 + tl.erf(gate * 0.7071067811865476))
    pdf = tl.exp(-0.5 * gate * gate) * 0.3989422804014327
    return cdf, pdf


@triton.jit
def _geglu_tile(ROWS, D, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's [BLOCK_R rows, BLOCK_D columns] of the output, and where their value half
    sits in ``projected`` (rows 2D long; the gate half is D further on)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    columns = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)[None, :]
    inside = (rows < ROWS) & (columns < D)
    return rows * D + columns, rows * 2 * D + columns, inside


# D is left to specialise: as a multiple of 16 (SD's widths are) the loads and stores are vectors
@triton.jit(do_not_specialize=["ROWS"])
def geglu(projected, out, ROWS, D, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[r, c] = projected[r, c] * gelu(projected[r, D + c])."""
    element, at, inside = _geglu_tile(ROWS, D, BLOCK_R, BLOCK_D)
    value = tl.load(projected + at, mask=inside, other=0.0).to(tl.float32)
    gate = tl.load(projected + at + D, mask=inside, other=0.0).to(tl.float32)
    cdf, _ = _gelu_parts(gate)
    tl.store(out + element, (value * gate * cdf).to(out.dtype.element_ty, fp_downcast_rounding="rtne"), mask=inside)


@triton.jit(do_not_specialize=["ROWS"])
def geglu_grad(projected, grad, dprojected, ROWS, D, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Both halves' gradients: d value = g * gelu(gate), d gate = g * value * gelu'(gate)."""
    element, at, inside = _geglu_tile(ROWS, D, BLOCK_R, BLOCK_D)
    value = tl.load(projected + at, mask=inside, other=0.0).to(tl.float32)
    gate = tl.load(projected + at + D, mask=inside, other=0.0).to(tl.float32)
    g = tl.load(grad + element, mask=inside, other=0.0).to(tl.float32)
    cdf, pdf = _gelu_parts(gate)
    kind = dprojected.dtype.element_ty
    tl.store(dprojected + at, (g * gate * cdf).to(kind, fp_downcast_rounding="rtne"), mask=inside)
    tl.store(dprojected + at + D, (g * value * (cdf + gate * pdf)).to(kind, fp_downcast_rounding="rtne"), mask=inside)


# C is left to specialise, as in the tile programs: a multiple of 16 makes the access vectors
@triton.jit(do_not_specialize=["ROWS"])
def add_bias(out, bias, ROWS, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[r, c] += bias[c], in float32 and rounded once (as torch adds), over a channels-last
    convolution output seen as ROWS = N*H*W rows of C channels."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    columns = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    inside = (rows < ROWS) & (columns < C)
    b = tl.load(bias + columns, mask=columns < C, other=0.0).to(tl.float32)
    value = tl.load(out + rows * C + columns, mask=inside, other=0.0).to(tl.float32) + b
    tl.store(out + rows * C + columns, value.to(out.dtype.element_ty, fp_downcast_rounding="rtne"), mask=inside)


# --- sampling attention: heads of width <= 64, forward only ----------------------------------


# LQ and LK are token counts; the row strides are left to specialise (multiples of 16: vectors)
@triton.jit(do_not_specialize=["LQ", "LK", "HEADS"])
def attention(
    q, k, v, out, LQ, LK, HEADS, q_row, k_row, v_row, out_row, scale_log2,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """softmax(q k^T / sqrt(D)) v for one head and BLOCK_M queries, keys taken BLOCK_N at a
    time with a running maximum and sum (flash attention's forward), in float32. Tokens are
    rows of each tensor (batch, tokens, row): head h is columns h*D to h*D + D, as diffusers'
    projections leave them, so nothing is transposed or copied."""
    image = tl.program_id(1) // HEADS
    head = tl.program_id(1) % HEADS
    queries = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    in_dims = dims < D
    q_at = q + image.to(tl.int64) * LQ * q_row + head * D
    k_at = k + image.to(tl.int64) * LK * k_row + head * D
    v_at = v + image.to(tl.int64) * LK * v_row + head * D
    q_tile = tl.load(
        q_at + queries[:, None] * q_row + dims[None, :], mask=(queries < LQ)[:, None] & in_dims[None, :], other=0.0
    )
    running_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    running_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, LK, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        in_keys = keys < LK
        k_tile = tl.load(
            k_at + keys[None, :] * k_row + dims[:, None], mask=in_keys[None, :] & in_dims[:, None], other=0.0
        )
        scores = tl.dot(q_tile, k_tile) * scale_log2  # in log2 units: exp2 is the cheap exponential
        # masked always, though 4096 keys fill whole steps: one compiled kernel serves both
        # attentions, which halves what a first sampling call spends compiling (~0.5 s)
        scores = tl.where(in_keys[None, :], scores, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(scores, axis=1))
        weights = tl.math.exp2(scores - new_max[:, None])
        shrink = tl.math.exp2(running_max - new_max)
        running_sum = running_sum * shrink + tl.sum(weights, axis=1)
        v_tile = tl.load(
            v_at + keys[:, None] * v_row + dims[None, :], mask=in_keys[:, None] & in_dims[None, :], other=0.0
        )
        acc = tl.dot(weights.to(v_tile.dtype), v_tile, acc * shrink[:, None])
        running_max = new_max
    acc = acc / running_sum[:, None]
    out_at = out + image.to(tl.int64) * LQ * out_row + head * D + queries[:, None] * out_row + dims[None, :]
    tl.store(out_at, acc.to(out.dtype.element_ty), mask=(queries < LQ)[:, None] & in_dims[None, :])


# --- training.masters: one program per chunk of a flat group, its gradient read in place ------


@triton.jit
def _chunk(chunks, sources, COUNT, dtype, ALIGN: tl.constexpr):
    """This program's chunk: its start in the flat buffers, its length, and its gradient."""
    chunk = tl.program_id(0)
    start = tl.multiple_of(tl.load(chunks + chunk), ALIGN)
    length = tl.multiple_of(tl.load(chunks + COUNT + chunk), ALIGN)
    param = tl.load(chunks + 2 * COUNT + chunk)
    within = tl.multiple_of(tl.load(chunks + 3 * COUNT + chunk), ALIGN)
    # the host checked each address is 16-byte aligned; said here, the loads are vectors
    grad = tl.multiple_of(tl.load(sources + param).to(tl.pointer_type(dtype)), 16)
    return start, length, grad + within


@triton.jit(do_not_specialize=["COUNT"])
def chunk_square_sums(chunks, sources, working, sums, COUNT, BLOCK: tl.constexpr, ALIGN: tl.constexpr):
    _, length, grad = _chunk(chunks, sources, COUNT, working.dtype.element_ty, ALIGN)
    total = tl.zeros([BLOCK], dtype=tl.float32)
    for offset in range(0, length, BLOCK):
        offsets = offset + tl.arange(0, BLOCK)
        g = tl.load(grad + offsets, mask=offsets < length, other=0.0).to(tl.float32)
        total += g * g
    tl.store(sums + tl.program_id(0), tl.sum(total, axis=0))


@triton.jit(do_not_specialize=["COUNT"])
def chunk_adamw(
    chunks, sources, master, exp_avg, exp_avg_sq, working, COUNT, lr_ptr, step_ptr, scale_ptr,
    beta1, beta2, eps, weight_decay,
    BLOCK: tl.constexpr, ALIGN: tl.constexpr, WRITE_WORKING: tl.constexpr,
):  # fmt: skip
    """torch's AdamW step (decoupled weight decay) on the float32 masters, the gradient times
    the clipping ``scale``; the working copy gets the new masters rounded to nearest."""
    start, length, grad = _chunk(chunks, sources, COUNT, working.dtype.element_ty, ALIGN)
    lr, step, scale = tl.load(lr_ptr), tl.load(step_ptr), tl.load(scale_ptr)
    decay = 1 - lr * weight_decay
    step_size = lr / (1 - tl.exp(step * tl.log(beta1)))
    correction2_sqrt = tl.sqrt(1 - tl.exp(step * tl.log(beta2)))
    for offset in range(0, length, BLOCK):
        offsets = offset + tl.arange(0, BLOCK)
        inside = offsets < length
        places = start + offsets
        g = tl.load(grad + offsets, mask=inside).to(tl.float32) * scale
        p = tl.load(master + places, mask=inside) * decay
        m = beta1 * tl.load(exp_avg + places, mask=inside) + (1 - beta1) * g
        v = beta2 * tl.load(exp_avg_sq + places, mask=inside) + (1 - beta2) * g * g
        p = p - step_size * m / (tl.sqrt(v) / correction2_sqrt + eps)
        tl.store(master + places, p, mask=inside)
        tl.store(exp_avg + places, m, mask=inside)
        tl.store(exp_avg_sq + places, v, mask=inside)
        if WRITE_WORKING:
            tl.store(working + places, p.to(working.dtype.element_ty, fp_downcast_rounding="rtne"), mask=inside)

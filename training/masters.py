"""AdamW over float32 master weights kept in flat buffers, with the forward's working copy
(bf16) written by the same pass that updates them.

Why: on an H100 a batch-1 full step spent 12.4 of its 41.9 ms casting ~700 weights to bf16 and
their gradients back, one tensor at a time, and 10.5 ms in torch's fused AdamW
(bench/step_profile.txt). Here each group of parameters lives in one flat float32 buffer (the
modules' parameters become views of it) and its working copy in a second, flat buffer the
forward reads through `torch.func.functional_call`. The gradients arrive in the working type,
as they did before the cast back. The math is torch's AdamW (decoupled weight decay) after
`clip_grad_norm_`, over float32 masters.

On CUDA with Triton a step is two kernels that read each gradient where autograd left it,
through a table of addresses: one sums squares for the norm, one updates and writes the
working copy. Gathering the gradients into a flat buffer first cost 1.5 ms of a 30.7 ms step.
Elsewhere the gradients are gathered and the same formula runs as tensor ops.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# elements: each parameter's place in the flat buffers starts at a multiple of this, and the
# kernels read whole pieces of it, so every load is a 16-byte vector (scalar loads made the
# update take 14 ms, not 8)
ALIGN = 16
CHUNK = 32768  # elements one program of the table kernels takes, in blocks of BLOCK
BLOCK = 4096


@dataclass
class FlatGroup:
    """One group's flat buffers and, per parameter, the views into them."""

    master: torch.Tensor  # float32; the parameters are views of it
    working: torch.Tensor  # the forward's copy (the master itself when the type is float32)
    grad: torch.Tensor  # gradients that cannot be read in place are copied here (zeros between them)
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    step: torch.Tensor  # on the device, so a captured step counts without the host
    leaves: list[torch.Tensor]  # what the forward uses and autograd fills: working views (or the params)
    grad_views: list[torch.Tensor]
    # the table kernels' work, one column per chunk: flat start, length (a multiple of ALIGN),
    # parameter, start within the parameter
    chunks: torch.Tensor
    sources: torch.Tensor  # per parameter, the address its gradient is read from this step
    captured_sources: torch.Tensor | None  # pinned: what a captured graph copies into `sources`


def aligned(n: int) -> int:
    return n + -n % ALIGN


def flat_length(like: list[torch.Tensor]) -> int:
    return sum(aligned(tensor.numel()) for tensor in like)


def flat_views(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """Views of ``flat`` shaped and strided like each tensor of ``like`` (channels-last too),
    one after the other, each starting at a multiple of ALIGN elements."""
    views, offset = [], 0
    for tensor in like:
        views.append(flat.as_strided(tensor.shape, tensor.stride(), offset))
        offset += aligned(tensor.numel())
    return views


def chunk_table(like: list[torch.Tensor]) -> torch.Tensor:
    """The table kernels' chunks over ``like``'s places in the flat buffers (see FlatGroup.chunks)."""
    columns: list[tuple[int, int, int, int]] = []
    offset = 0
    for index, tensor in enumerate(like):
        length = aligned(tensor.numel())
        for within in range(0, length, CHUNK):
            columns.append((offset + within, min(CHUNK, length - within), index, within))
        offset += length
    return torch.tensor(columns, dtype=torch.int64).T.contiguous()


def dense(tensor: torch.Tensor) -> bool:
    """Whether a tensor's elements fill exactly ``numel`` consecutive places (any order)."""
    if tensor.numel() <= 1:
        return True
    order = sorted(zip(tensor.stride(), tensor.shape, strict=True))
    expected = 1
    for stride, size in order:
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def readable_in_place(grad: torch.Tensor, view: torch.Tensor) -> bool:
    """Whether the table kernels can read this gradient where it is: laid out as its place in
    the flat buffers, filling whole ALIGN-element pieces, at an address their vector loads take."""
    return (
        grad.dtype == view.dtype
        and grad.device == view.device
        and grad.stride() == view.stride()
        and grad.numel() % ALIGN == 0
        and grad.data_ptr() % 16 == 0
    )


class FlatAdamW(torch.optim.Optimizer):
    """AdamW with clipping to ``max_norm``, for groups that each give a ``working_dtype``.

    The forward must use `leaves(i)` for group i's parameters (`torch.func.functional_call`);
    for a float32 group those are the parameters themselves. `zero_grad` clears them.

    ``kernels``: the table kernels (`TritonKernels`), chosen for a CUDA device with Triton
    when not given; ``False`` for the tensor ops."""

    def __init__(
        self,
        groups: list[dict],
        lr: float,
        weight_decay: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        max_norm: float = 1.0,
        kernels: TritonKernels | bool | None = None,
    ) -> None:
        defaults = {"lr": lr, "weight_decay": weight_decay, "betas": betas, "eps": eps}
        super().__init__(groups, defaults)
        self.max_norm = max_norm
        self.flat: list[FlatGroup] = [self._flatten(group) for group in self.param_groups]
        if kernels is None:
            kernels = triton_kernels(self.flat[0].master.device)
        self.kernels: TritonKernels | None = kernels or None

    @torch.no_grad()
    def _flatten(self, group: dict) -> FlatGroup:
        params: list[torch.nn.Parameter] = group["params"]
        if any(not dense(p) or p.dtype != torch.float32 for p in params):
            raise ValueError("FlatAdamW takes float32 parameters laid out densely (contiguous or channels-last)")
        device, numel = params[0].device, flat_length(params)
        # the zeros between parameters stay zero: a zero gradient leaves them be
        master = torch.zeros(numel, dtype=torch.float32, device=device)
        for param, view in zip(params, flat_views(master, params), strict=True):
            view.copy_(param)
            param.data = view
        working_dtype = group.get("working_dtype", torch.float32)
        if working_dtype == torch.float32:
            working, leaves = master, list(params)
        else:
            working = master.to(working_dtype)
            leaves = [view.requires_grad_() for view in flat_views(working, params)]
        grad = torch.zeros(numel, dtype=working_dtype, device=device)
        exp_avg, exp_avg_sq = torch.zeros_like(master), torch.zeros_like(master)
        step = torch.zeros((), dtype=torch.float32, device=device)
        for param, m, v in zip(params, flat_views(exp_avg, params), flat_views(exp_avg_sq, params), strict=True):
            self.state[param] = {"step": step, "exp_avg": m, "exp_avg_sq": v}  # torch AdamW's layout
        sources = torch.zeros(len(params), dtype=torch.int64, device=device)
        captured_sources = torch.zeros_like(sources, device="cpu").pin_memory() if device.type == "cuda" else None
        return FlatGroup(
            master, working, grad, exp_avg, exp_avg_sq, step, leaves, flat_views(grad, params),
            chunk_table(params).to(device), sources, captured_sources,
        )  # fmt: skip

    def leaves(self, group: int = 0) -> list[torch.Tensor]:
        return self.flat[group].leaves

    def zero_grad(self, set_to_none: bool = True) -> None:
        for flat in self.flat:
            for leaf in flat.leaves:
                leaf.grad = None

    @torch.no_grad()
    def step(self, closure=None):
        if self.kernels is None:
            for flat in self.flat:
                gather_gradients(flat)
            squares = [torch.linalg.vector_norm(flat.grad, dtype=torch.float32).square() for flat in self.flat]
        else:
            for flat in self.flat:
                point_at_gradients(flat)
            squares = [self.kernels.square_sum(flat) for flat in self.flat]
        total = torch.stack(squares).sum().sqrt()
        # clip_grad_norm_'s coefficient: max_norm / (total + 1e-6), never above one
        scale = torch.clamp(self.max_norm / (total + 1e-6), max=1.0)
        for group, flat in zip(self.param_groups, self.flat, strict=True):
            flat.step.add_(1)
            lr = group["lr"] if isinstance(group["lr"], torch.Tensor) else torch.tensor(group["lr"])
            lr = lr.to(flat.master.device, torch.float32)
            if self.kernels is None:
                torch_update(flat, lr, scale, group)
            else:
                self.kernels.update(flat, lr, scale, group)

    @torch.no_grad()
    def release(self) -> None:
        """Gives each parameter its own memory again and drops the flat buffers: done training,
        the parameters get saved, and safetensors refuses tensors that share memory."""
        self.flat = []  # the optimizer's buffers go first, so the copies fit where they were
        self.state.clear()
        for group in self.param_groups:
            for param in group["params"]:
                param.data = param.data.clone()

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's loading replaces the state tensors; their values go back into the flat
        buffers' views, and the working copy is refreshed from the masters (which resume has
        just loaded)."""
        views = {param: dict(state) for param, state in self.state.items()}
        super().load_state_dict(state_dict)
        with torch.no_grad():
            for param, state in views.items():
                for key, view in state.items():
                    view.copy_(self.state[param][key])
                self.state[param] = state
            for flat in self.flat:
                if flat.working is not flat.master:
                    flat.working.copy_(flat.master)


def gather_gradients(flat: FlatGroup) -> None:
    """Every gradient copied into the flat gradient buffer; a parameter the forward did not
    use gets zero, so only weight decay moves it (torch's AdamW would skip it; every UNet
    weight is used)."""
    views, grads = [], []
    for view, leaf in zip(flat.grad_views, flat.leaves, strict=True):
        if leaf.grad is None:
            view.zero_()
        else:
            views.append(view)
            grads.append(leaf.grad)
    if views:
        torch._foreach_copy_(views, grads)


def point_at_gradients(flat: FlatGroup) -> None:
    """Fills ``flat.sources``: each gradient's own address where the kernels can read it there,
    else its place in the flat gradient buffer, copied (or zeroed) there first."""
    addresses = []
    for view, leaf in zip(flat.grad_views, flat.leaves, strict=True):
        grad = leaf.grad
        if grad is None:
            view.zero_()
        elif not readable_in_place(grad, view):
            view.copy_(grad)
        else:
            addresses.append(grad.data_ptr())
            continue
        addresses.append(view.data_ptr())
    table = torch.tensor(addresses, dtype=torch.int64)
    if not flat.sources.is_cuda:
        flat.sources.copy_(table)
    elif torch.cuda.is_current_stream_capturing():
        # a captured copy re-reads its host memory at every replay: these addresses are the
        # graph's own, and this pinned buffer is kept for it (one captured step per optimizer)
        flat.captured_sources.copy_(table)
        flat.sources.copy_(flat.captured_sources, non_blocking=True)
    else:
        flat.sources.copy_(table.pin_memory(), non_blocking=True)  # the host does not wait


def torch_update(flat: FlatGroup, lr: torch.Tensor, scale: torch.Tensor, group: dict) -> None:
    """The update as tensor ops over the gathered gradients: the CPU's, and the reference the
    kernels are tested against."""
    beta1, beta2 = group["betas"]
    grad = flat.grad.float() * scale
    flat.master.mul_(1 - lr * group["weight_decay"])
    flat.exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
    flat.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    correction1 = 1 - beta1**flat.step
    correction2_sqrt = (1 - beta2**flat.step).sqrt()
    denom = flat.exp_avg_sq.sqrt() / correction2_sqrt + group["eps"]
    flat.master.sub_(lr / correction1 * flat.exp_avg / denom)
    if flat.working is not flat.master:
        flat.working.copy_(flat.master)


# --- the table kernels ----------------------------------------------------------------------


def triton_kernels(device: torch.device) -> TritonKernels | None:
    if device.type == "cuda":
        try:
            return TritonKernels()
        except ImportError:
            pass
    return None


class TritonKernels:
    """The step's two kernels. Each program takes one chunk (FlatGroup.chunks) and reads its
    gradient at the address the parameter's source gives, so no gradient is copied."""

    def __init__(self, warps: int = 4) -> None:
        from herdbook.training import kernels

        self.kernels, self.warps = kernels, warps

    def square_sum(self, flat: FlatGroup) -> torch.Tensor:
        """The sum of the group's squared gradients, in float32."""
        count = flat.chunks.shape[1]
        sums = torch.empty(count, dtype=torch.float32, device=flat.master.device)
        self.kernels.chunk_square_sums[(count,)](
            flat.chunks, flat.sources, flat.working, sums, count, BLOCK=BLOCK, ALIGN=ALIGN, num_warps=self.warps
        )
        return sums.sum()

    def update(self, flat: FlatGroup, lr: torch.Tensor, scale: torch.Tensor, group: dict) -> None:
        beta1, beta2 = group["betas"]
        count = flat.chunks.shape[1]
        self.kernels.chunk_adamw[(count,)](
            flat.chunks, flat.sources, flat.master, flat.exp_avg, flat.exp_avg_sq, flat.working, count,
            lr, flat.step, scale, beta1, beta2, group["eps"], group["weight_decay"],
            BLOCK=BLOCK, ALIGN=ALIGN, WRITE_WORKING=flat.working is not flat.master, num_warps=self.warps,
        )  # fmt: skip

"""AdamW over float32 master weights kept in flat buffers, with the forward's working copy
(bf16) written by the same pass that updates them.

Why: on an H100 a batch-1 full step spent 12.4 of its 41.9 ms casting ~700 weights to bf16 and
their gradients back, one tensor at a time, and 10.5 ms in torch's fused AdamW
(bench/step_profile.txt). Here each group of parameters lives in one flat float32 buffer (the
modules' parameters become views of it), its working copy in a second, flat buffer the
forward reads through `torch.func.functional_call`, and its gradients (which arrive in the
working type, as they did before the cast back) are gathered into a third. Per step: one
gather, one norm, one update that also writes the working copy. The math is torch's AdamW
(decoupled weight decay) after `clip_grad_norm_`, over float32 masters.

On CUDA with Triton the update is one kernel; elsewhere the same formula runs as tensor ops.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PADDING = 4096  # elements: the flat buffers' lengths are multiples of this (and of the update's block)


@dataclass
class FlatGroup:
    """One group's flat buffers and, per parameter, the views into them."""

    master: torch.Tensor  # float32; the parameters are views of it
    working: torch.Tensor  # the forward's copy (the master itself when the type is float32)
    grad: torch.Tensor  # the gathered gradients, in the working type
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    step: torch.Tensor  # on the device, so a captured step counts without the host
    leaves: list[torch.Tensor]  # what the forward uses and autograd fills: working views (or the params)
    grad_views: list[torch.Tensor]


def flat_views(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """Views of ``flat`` shaped and strided like each tensor of ``like`` (channels-last too),
    one after the other."""
    views, offset = [], 0
    for tensor in like:
        views.append(flat.as_strided(tensor.shape, tensor.stride(), offset))
        offset += tensor.numel()
    return views


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


class FlatAdamW(torch.optim.Optimizer):
    """AdamW with clipping to ``max_norm``, for groups that each give a ``working_dtype``.

    The forward must use `leaves(i)` for group i's parameters (`torch.func.functional_call`);
    for a float32 group those are the parameters themselves. `zero_grad` clears them."""

    def __init__(
        self,
        groups: list[dict],
        lr: float,
        weight_decay: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        max_norm: float = 1.0,
    ) -> None:
        defaults = {"lr": lr, "weight_decay": weight_decay, "betas": betas, "eps": eps}
        super().__init__(groups, defaults)
        self.max_norm = max_norm
        self.flat: list[FlatGroup] = [self._flatten(group) for group in self.param_groups]
        self.update = update_kernel(self.flat[0].master.device)

    @torch.no_grad()
    def _flatten(self, group: dict) -> FlatGroup:
        params: list[torch.nn.Parameter] = group["params"]
        if any(not dense(p) or p.dtype != torch.float32 for p in params):
            raise ValueError("FlatAdamW takes float32 parameters laid out densely (contiguous or channels-last)")
        device, numel = params[0].device, sum(p.numel() for p in params)
        # padded with zeros (which stay zero) to whole blocks: Triton vectorises the update's
        # loads only when the length divides evenly; 860 M unpadded values took 14 ms, not 8
        numel += -numel % PADDING
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
        return FlatGroup(master, working, grad, exp_avg, exp_avg_sq, step, leaves, flat_views(grad, params))

    def leaves(self, group: int = 0) -> list[torch.Tensor]:
        return self.flat[group].leaves

    def zero_grad(self, set_to_none: bool = True) -> None:
        for flat in self.flat:
            for leaf in flat.leaves:
                leaf.grad = None

    @torch.no_grad()
    def step(self, closure=None):
        for flat in self.flat:
            views, grads = [], []
            for view, leaf in zip(flat.grad_views, flat.leaves, strict=True):
                if leaf.grad is None:
                    # a parameter the forward did not use gets a zero gradient, so only weight
                    # decay moves it (torch's AdamW would skip it); every UNet weight is used
                    view.zero_()
                else:
                    views.append(view)
                    grads.append(leaf.grad)
            if views:
                torch._foreach_copy_(views, grads)
        norms = torch.stack([torch.linalg.vector_norm(flat.grad, dtype=torch.float32) for flat in self.flat])
        total = torch.linalg.vector_norm(norms)
        # clip_grad_norm_'s coefficient: max_norm / (total + 1e-6), never above one
        scale = torch.clamp(self.max_norm / (total + 1e-6), max=1.0)
        for group, flat in zip(self.param_groups, self.flat, strict=True):
            flat.step.add_(1)
            lr = group["lr"] if isinstance(group["lr"], torch.Tensor) else torch.tensor(group["lr"])
            self.update(flat, lr.to(flat.master.device, torch.float32), scale, group)

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


# --- the update ---------------------------------------------------------------------------


def update_kernel(device: torch.device):
    """The fused update for this device: one Triton kernel on CUDA, else tensor ops."""
    if device.type == "cuda":
        try:
            return triton_update()
        except ImportError:
            pass
    return torch_update


def torch_update(flat: FlatGroup, lr: torch.Tensor, scale: torch.Tensor, group: dict) -> None:
    """The update as tensor ops: the CPU's, and the reference the kernel is tested against."""
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


def triton_update(block: int = 4096, warps: int = 4):
    import triton
    import triton.language as tl

    @triton.jit
    def adamw(
        master, grad, exp_avg, exp_avg_sq, working, n, lr_ptr, step_ptr, scale_ptr,
        beta1, beta2, eps, weight_decay,
        BLOCK: tl.constexpr, WRITE_WORKING: tl.constexpr,
    ):  # fmt: skip
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = offsets < n
        lr, step, scale = tl.load(lr_ptr), tl.load(step_ptr), tl.load(scale_ptr)
        p = tl.load(master + offsets, mask=inside)
        g = tl.load(grad + offsets, mask=inside).to(tl.float32) * scale
        m = tl.load(exp_avg + offsets, mask=inside)
        v = tl.load(exp_avg_sq + offsets, mask=inside)
        p = p * (1 - lr * weight_decay)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        correction1 = 1 - tl.exp(step * tl.log(beta1))
        correction2_sqrt = tl.sqrt(1 - tl.exp(step * tl.log(beta2)))
        p = p - (lr / correction1) * m / (tl.sqrt(v) / correction2_sqrt + eps)
        tl.store(master + offsets, p, mask=inside)
        tl.store(exp_avg + offsets, m, mask=inside)
        tl.store(exp_avg_sq + offsets, v, mask=inside)
        if WRITE_WORKING:
            tl.store(working + offsets, p.to(working.dtype.element_ty, fp_downcast_rounding="rtne"), mask=inside)

    def update(flat: FlatGroup, lr: torch.Tensor, scale: torch.Tensor, group: dict) -> None:
        beta1, beta2 = group["betas"]
        n = flat.master.numel()
        adamw[(triton.cdiv(n, block),)](
            flat.master, flat.grad, flat.exp_avg, flat.exp_avg_sq, flat.working, n, lr, flat.step, scale,
            beta1, beta2, group["eps"], group["weight_decay"],
            BLOCK=block, WRITE_WORKING=flat.working is not flat.master, num_warps=warps,
        )  # fmt: skip

    return update

"""The fast path's optimizer: flat float32 masters, a bf16 working copy, one fused update."""

import io

import pytest
import torch
from herdbook.training.masters import ALIGN, FlatAdamW, dense, flat_length, flat_views

from tests.training.interpreter import passes_in_triton_interpreter


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(8, 4, 1))
    return model.to(memory_format=torch.channels_last)  # the fast path's layout on a GPU


def largest_gap(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def loss_of(model, weights=None, seed=0):
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(seed))
    if weights is None:
        return model(x).pow(2).mean()
    dtype = next(iter(weights.values())).dtype
    return torch.func.functional_call(model, weights, (x.to(dtype),)).float().pow(2).mean()


def test_views_keep_each_parameters_shape_and_layout_at_aligned_places():
    model = small_model()
    params = list(model.parameters())
    assert all(dense(p) for p in params) and not dense(torch.randn(4, 4)[:, :2])
    flat = torch.zeros(flat_length(params))
    views = flat_views(flat, params)
    assert [(v.shape, v.stride()) for v in views] == [(p.shape, p.stride()) for p in params]
    assert all(v.storage_offset() % ALIGN == 0 for v in views)
    for number, view in enumerate(views, start=1):
        view.fill_(number)
    # each view has places of its own, and the rest (between and after) is left alone
    assert [int((flat == n).sum()) for n in range(1, len(views) + 1)] == [p.numel() for p in params]


@pytest.mark.parametrize("grad_scale", [0.01, 100.0])  # under the clipping norm, and far over it
def test_float32_groups_step_as_torch_adamw_after_clip_grad_norm(grad_scale):
    model, reference = small_model(), small_model()
    flat = FlatAdamW([{"params": list(model.parameters())}], lr=1e-2, max_norm=1.0)
    plain = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=1e-2)
    for step in range(4):
        for m, opt in ((model, flat), (reference, plain)):
            opt.zero_grad()
            (loss_of(m, seed=step) * grad_scale).backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
        flat.step()
        plain.step()
        assert largest_gap(model.parameters(), reference.parameters()) < 1e-6
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_a_bf16_working_copy_gets_what_per_step_casts_got():
    """The old fast path cast each float32 weight to bf16 every step (differentiably, so its
    gradient came back as float32); the working copy must give the same update."""
    model, reference = small_model(), small_model()
    names = [name for name, _ in model.named_parameters()]
    flat = FlatAdamW([{"params": list(model.parameters()), "working_dtype": torch.bfloat16}], lr=1e-2)
    plain = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=1e-2)
    for step in range(4):
        flat.zero_grad()
        loss_of(model, dict(zip(names, flat.leaves(), strict=True)), seed=step).backward()
        plain.zero_grad()
        cast = {name: p.to(torch.bfloat16) for name, p in reference.named_parameters()}
        loss_of(reference, cast, seed=step).backward()
        assert all(p.grad.dtype == torch.float32 for p in reference.parameters())
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
        flat.step()
        plain.step()
        assert largest_gap(model.parameters(), reference.parameters()) < 1e-6
        # the forward's copy follows the masters; the module's parameters are the masters
        assert same(flat.leaves(), [p.to(torch.bfloat16) for p in model.parameters()])
    assert all(p.dtype == torch.float32 and p.grad is None for p in model.parameters())


def test_a_reloaded_optimizer_steps_on_as_the_uninterrupted_one():
    model, resumed_model = small_model(), small_model()
    names = [name for name, _ in model.named_parameters()]
    first = FlatAdamW([{"params": list(model.parameters()), "working_dtype": torch.bfloat16}], lr=1e-2)

    def step(opt, m, seed):
        opt.zero_grad()
        loss_of(m, dict(zip(names, opt.leaves(), strict=True)), seed=seed).backward()
        opt.step()

    for seed in range(3):
        step(first, model, seed)
    saved = io.BytesIO()
    torch.save({"params": [p.detach().clone() for p in model.parameters()], "optimizer": first.state_dict()}, saved)
    saved.seek(0)
    state = torch.load(saved, weights_only=False)
    second = FlatAdamW([{"params": list(resumed_model.parameters()), "working_dtype": torch.bfloat16}], lr=1e-2)
    with torch.no_grad():  # as dreambooth.resume does: the masters first, then the optimizer
        for param, value in zip(resumed_model.parameters(), state["params"], strict=True):
            param.copy_(value)
    second.load_state_dict(state["optimizer"])
    assert same(first.leaves(), second.leaves())
    step(first, model, 3)
    step(second, resumed_model, 3)
    assert same(model.parameters(), resumed_model.parameters())


def test_parameters_the_forward_did_not_use_stay_put_apart_from_weight_decay():
    model = small_model()
    unused = torch.nn.Parameter(torch.ones(3))
    optimizer = FlatAdamW([{"params": [*model.parameters(), unused], "working_dtype": torch.bfloat16}], lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        optimizer.step()  # no gradient at all: nothing but the decoupled weight decay
    assert torch.allclose(unused.detach(), torch.full((3,), (1 - 1e-2 * 1e-2) ** 2))


def test_released_parameters_have_their_own_memory_and_save(tmp_path):
    from safetensors.torch import save_file

    model = small_model()
    optimizer = FlatAdamW([{"params": list(model.parameters())}], lr=1e-2)
    shared = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert len(shared) == 1
    optimizer.release()
    assert len({p.untyped_storage().data_ptr() for p in model.parameters()}) == len(list(model.parameters()))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "model.safetensors")


@pytest.mark.slow  # seconds: out of the quick loop
def test_the_table_kernels_step_as_the_tensor_ops_do():
    """Run in Triton's interpreter on the CPU (a GPU runs the compiled kernels; bench/gpu_round.py
    trains with them and prints the probe loss beside the reference path's). Gradients of every
    kind: read in place (one over several chunks), copied (a length that is no multiple of the
    alignment, a transposed layout) and absent."""
    script = """
import torch
from herdbook.training import masters

def run(kernels):
    torch.manual_seed(0)
    shapes = [(70000,), (37,), (64, 48), (4096,), (5,)]
    params = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]
    opt = masters.FlatAdamW([{"params": params, "working_dtype": torch.bfloat16}], lr=1e-2, kernels=kernels)
    for step in range(3):
        opt.zero_grad()
        for leaf in opt.leaves()[:-1]:  # the last parameter gets no gradient
            leaf.grad = (torch.randn(leaf.shape) * 3).to(torch.bfloat16)
        opt.leaves()[2].grad = opt.leaves()[2].grad.T.contiguous().T  # strides unlike its place
        opt.step()
    return opt

a, b = run(False), run(masters.TritonKernels())
places = [b.flat[0].grad_views[i].data_ptr() for i in range(5)]
in_place = [s != p for s, p in zip(b.flat[0].sources.tolist(), places)]
assert in_place == [True, False, False, True, False], in_place
for name in ("master", "exp_avg", "exp_avg_sq"):
    x, y = getattr(a.flat[0], name), getattr(b.flat[0], name)
    assert (x - y).abs().max() <= 1e-6 * (1 + x.abs().max()), name
# the interpreter truncates to bf16 where a GPU rounds to nearest: within one bf16 step
assert torch.allclose(b.flat[0].working.float(), b.flat[0].master, rtol=2**-7, atol=0), "working copy"
print("same")
"""
    passes_in_triton_interpreter(script)

"""The fast layers: the kernels compute what torch computes (GroupNorm over channels-last
activations, diffusers' GEGLU) and its gradients; each layer is torch's own wherever the
kernels don't run."""

import torch
from herdbook.training.layers import ChannelsLastGroupNorm, FusedGEGLU, Plan, fast_layers, runs_in_kernels

from tests.training.interpreter import passes_in_triton_interpreter


def test_the_kernels_compute_torchs_group_norm_and_its_gradients():
    """Run in Triton's interpreter on the CPU (a GPU runs the compiled kernels; bench/step_profile.py
    compares them with torch's at the UNet's shapes). The shapes cover one and several splits per
    group, a split that ends inside a row, odd group widths and images of more than one row."""
    script = """
import torch
import torch.nn.functional as F
from herdbook.training.layers import GroupNormFunction, Plan

def gaps(shape, groups, dtype):
    torch.manual_seed(0)
    x = (torch.randn(shape) * 2 + 3).to(dtype).to(memory_format=torch.channels_last)
    w, b = torch.randn(shape[1]).to(dtype), torch.randn(shape[1]).to(dtype)
    dy = torch.randn(shape).to(dtype).to(memory_format=torch.channels_last)
    ours = [t.clone().requires_grad_() for t in (x, w, b)]
    y = GroupNormFunction.apply(*ours, groups, 1e-5)
    y.backward(dy)
    assert y.is_contiguous(memory_format=torch.channels_last) and y.dtype == dtype
    assert ours[0].grad.is_contiguous(memory_format=torch.channels_last)
    ref = [t.float().clone().requires_grad_() for t in (x, w, b)]
    r = F.group_norm(ref[0], groups, ref[1], ref[2], 1e-5)
    r.backward(dy.float())
    pairs = [(y, r), (ours[0].grad, ref[0].grad), (ours[1].grad, ref[1].grad), (ours[2].grad, ref[2].grad)]
    return [((a.float() - e).abs().max() / e.abs().max()).item() for a, e in pairs]

splits = {}
for shape, groups in [((2, 64, 5, 7), 32), ((1, 40, 9, 9), 4), ((1, 12, 30, 30), 3), ((1, 64, 32, 32), 4)]:
    splits[shape] = Plan.of(torch.empty(shape), groups).splits
    assert max(gaps(shape, groups, torch.float32)) < 2e-6, shape
assert sorted(set(splits.values())) == [1, 2, 8], splits
assert max(gaps((2, 40, 9, 9), 4, torch.bfloat16)) < 2**-7  # one rounding to bfloat16
print("same")

"""
    passes_in_triton_interpreter(script)


def test_the_geglu_kernels_compute_diffusers_geglu_and_its_gradient():
    """In Triton's interpreter, as above; rows of an odd width, more rows than one program's."""
    script = """
import torch
from herdbook.training.layers import GegluFunction

def gaps(shape, dtype):
    torch.manual_seed(0)
    projected = (torch.randn(shape) * 2).to(dtype)
    dy = torch.randn(*shape[:-1], shape[-1] // 2).to(dtype)
    ours, ref = projected.clone().requires_grad_(), projected.float().requires_grad_()
    y = GegluFunction.apply(ours)
    y.backward(dy)
    value, gate = ref.chunk(2, dim=-1)
    r = value * torch.nn.functional.gelu(gate)
    r.backward(dy.float())
    assert y.shape == r.shape and y.dtype == dtype and ours.grad.dtype == dtype
    return [((a.float() - e).abs().max() / e.abs().max()).item() for a, e in [(y, r), (ours.grad, ref.grad)]]

assert max(gaps((3, 5, 2 * 37), torch.float32)) < 1e-6
assert max(gaps((2, 700, 2 * 24), torch.float32)) < 1e-6
assert max(gaps((2, 33, 2 * 40), torch.bfloat16)) < 2**-7
print("same")
"""
    passes_in_triton_interpreter(script)


def test_fast_layers_swap_every_group_norm_and_geglu_and_keep_the_weights():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GroupNorm(4, 8), torch.nn.SiLU(), torch.nn.GroupNorm(2, 8)
    )
    x = torch.randn(2, 3, 6, 6)
    before, state = model(x), {k: v.clone() for k, v in model.state_dict().items()}
    fast_layers(model)
    assert [type(m) for m in model if isinstance(m, torch.nn.GroupNorm)] == [ChannelsLastGroupNorm] * 2
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    # on a CPU the module is torch's GroupNorm
    assert torch.allclose(model(x.to(memory_format=torch.channels_last)), before, atol=1e-6)

    from diffusers.models.activations import GEGLU

    geglu = GEGLU(8, 6)
    tokens = torch.randn(2, 5, 8)
    before = geglu(tokens)
    fast_layers(geglu)
    assert type(geglu) is FusedGEGLU and list(geglu.state_dict()) == ["proj.weight", "proj.bias"]
    assert torch.allclose(geglu(tokens), before, atol=1e-6)


def test_the_kernels_run_only_where_they_can():
    norm = ChannelsLastGroupNorm(4, 8)
    cpu = torch.randn(1, 8, 4, 4).to(memory_format=torch.channels_last)
    assert not runs_in_kernels(cpu, norm)  # no GPU
    assert not runs_in_kernels(cpu.contiguous(), norm)
    assert not runs_in_kernels(torch.randn(1, 8, 16), norm)


def test_a_plan_fills_the_gpu_at_batch_one_and_covers_every_element():
    for shape in [(1, 320, 64, 64), (1, 2560, 8, 8), (8, 320, 64, 64), (1, 64, 1, 1)]:
        plan = Plan.of(torch.empty(shape, device="meta"), 32)
        size = shape[2] * shape[3] * shape[1] // 32  # one group's elements
        assert (plan.splits - 1) * plan.per < size <= plan.splits * plan.per  # all covered, no split idle
        assert plan.splits == 1 or plan.images * 32 * plan.splits <= 512
    assert Plan.of(torch.empty(1, 320, 64, 64, device="meta"), 32).splits == 16

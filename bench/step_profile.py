"""Where a batch-1 training step and a 4-image sampling call spend GPU time: kernels by family.

SD-1.5's architecture with random weights, 512 px, the fast path's settings (bf16 all through
over float32 masters, clipped and updated by two Triton kernels (training.masters), channels-last). For each case: the captured
(CUDA graph) time, the sum of its kernels' GPU time from an eager profile, and the kernels
grouped by what they do, so the next change goes where the time is.

    python3 -m bench.step_profile [--cases full,lora,sample] [--attention default,cudnn,efficient]

A case's layout follows a dash: none is herdbook's (channels-last with training.layers's
kernels), "torch" channels-last with torch's own layers, "nchw" torch's default layout.
"""

from __future__ import annotations

import argparse
import itertools
import re
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from bench.gpu_round import ROOT, sd15_components, synthetic_instance

FAMILIES = [  # first match wins
    ("optimizer", r"adam"),
    ("attention", r"flash|fmha|attention|sdpa|cudnn_attn|mha"),
    ("convolution", r"fprop|dgrad|wgrad|conv|implicit_gemm|implicit_convolve"),
    ("matmul", r"gemm|nvjet|cutlass|xmma|cublas"),
    (
        "group norm",
        r"group_?norm|group_sums|grad_sums|grad_input|normalize|rowwisemoments|fusedparams|internalgradients|compute1d|groupnormbackward",
    ),
    ("layer norm", r"layer_?norm"),
    ("norm/reduce", r"foreach.*norm|reduce_kernel|norm_kernel"),
    ("cast/copy", r"copy|cast|convert"),
    ("elementwise", r"elementwise|vectorized|unrolled|foreach|geglu"),
]


def family(kernel: str) -> str:
    lowered = kernel.lower()
    for name, pattern in FAMILIES:
        if re.search(pattern, lowered):
            return name
    return "other"


def captured_ms(fn, replays: int = 30) -> float:
    from herdbook.training.graphs import CapturedStep

    captured = CapturedStep(fn)  # the trainer's own capture: warm-up on a side stream, then one graph
    for _ in range(CapturedStep.WARMUP + 1):
        captured()
    graph = captured.graph
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def kernel_profile(fn, calls: int = 3) -> tuple[dict[str, list[float]], dict[str, float]]:
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    families: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    kernels: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        ms = event.time_range.elapsed_us() / 1000 / calls
        kind = family(event.name)
        families[kind][0] += ms
        families[kind][1] += 1 / calls
        kernels[event.name] += ms
    return families, kernels


def copy_origins(fn, calls: int = 2) -> None:
    """Which Python lines (forward) or autograd nodes (backward) launch the copy kernels."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=True) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    origins: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        if event.name not in ("aten::copy_", "aten::add", "aten::add_", "aten::clone") or event.cpu_parent is None:
            continue
        if event.cpu_parent.name.startswith("aten::") and event.cpu_parent.name not in ("aten::to", "aten::_to_copy"):
            where = event.cpu_parent.name
        else:
            where = ""
        node = event
        while node is not None and not node.name.startswith("autograd::engine::evaluate_function"):
            node = node.cpu_parent
        if node is not None:
            where = node.name.split(": ")[-1] + " / " + where
        else:
            frames = [f for f in event.stack if "diffusers" in f or "peft" in f or "herdbook" in f]
            where = (frames[0].split("site-packages/")[-1] if frames else "?") + " / " + where
        origins[f"{event.name} <- {where}"][0] += event.device_time_total / 1000 / calls
        origins[f"{event.name} <- {where}"][1] += 1 / calls
    print("  copies and adds by origin (ms per call, count):")
    for name, (ms, n) in sorted(origins.items(), key=lambda kv: -kv[1][0])[:18]:
        print(f"    {ms:6.2f} ms {n:5.0f}x  {name[:150]}")


def optimizer_sweep() -> None:
    """The step's two kernels (training.masters: squares for the norm, then the update) over
    860 M parameters, by warps per program."""
    import triton
    from herdbook.training import masters

    params = [torch.nn.Parameter(torch.randn(430_000_000, device="cuda")) for _ in range(2)]
    opt = masters.FlatAdamW([{"params": params, "working_dtype": torch.bfloat16}], lr=1e-2)
    for leaf in opt.leaves():
        leaf.grad = torch.randn_like(leaf)
    flat, group = opt.flat[0], opt.param_groups[0]
    masters.point_at_gradients(flat)
    lr, scale = torch.tensor(1e-2, device="cuda"), torch.tensor(1.0, device="cuda")
    for warps in (4, 8):
        kernels = masters.TritonKernels(warps=warps)
        ms = triton.testing.do_bench(
            lambda k=kernels: (k.square_sum(flat), k.update(flat, lr, scale, group)), return_mode="median"
        )
        # bytes per parameter: the gradient read twice (2 + 2), masters and both moments read
        # and written (24), the working copy written (2)
        print(f"  warps {warps:2d}: {ms:6.2f} ms, {30 * 860e6 / ms / 1e9:5.2f} TB/s")


def report(label: str, fn) -> None:
    graph_ms = captured_ms(fn)
    families, kernels = kernel_profile(fn)
    busy = sum(ms for ms, _ in families.values())
    count = sum(n for _, n in families.values())
    print(f"\n## {label}: captured {graph_ms:.1f} ms; kernels {busy:.1f} ms GPU time, {count:.0f} launches", flush=True)
    for name, (ms, n) in sorted(families.items(), key=lambda kv: -kv[1][0]):
        print(f"  {name:<14} {ms:7.2f} ms {n:6.0f} kernels  {100 * ms / busy:5.1f}%")
    print("  top kernels:")
    for name, ms in sorted(kernels.items(), key=lambda kv: -kv[1])[:14]:
        print(f"    {ms:6.2f} ms  {family(name):<12} {name[:110]}")


def training_case(case: str):
    mode, _, layout = case.partition("-")  # "full", "lora", "full-nchw", "lora-torch", ...
    from herdbook.training.dreambooth import forward_in, prepare_trainable, trainable_groups, trained_names
    from herdbook.training.masters import FlatAdamW
    from herdbook.training.settings import ModelChain, RoundSettings

    out = Path(tempfile.mkdtemp())
    instance = ROOT / ".bench-data" / "instance"
    if not instance.is_dir():
        instance = synthetic_instance(out / "instance")
    settings = RoundSettings(
        instance_dir=str(instance),
        output_dir=str(out / "round"),
        model=ModelChain("sd15-architecture-random-weights"),
        mode=mode,
        learning_rate=1e-4 if mode == "lora" else 5e-6,
        validation_prompts=[],
    )
    parts = sd15_components()
    prepare_trainable(parts, settings, torch.bfloat16)
    unet = in_layout(parts.unet.to("cuda"), layout)
    optimizer = FlatAdamW(trainable_groups(parts, settings, torch.bfloat16), lr=settings.learning_rate)
    for group in optimizer.param_groups:
        group["lr"] = torch.tensor(float(group["lr"]), device="cuda")
    names = trained_names(unet)
    generator = torch.Generator(device="cuda").manual_seed(0)
    latents = torch.randn(1, 4, 64, 64, device="cuda", generator=generator)
    noise = torch.randn(1, 4, 64, 64, device="cuda", generator=generator)
    timesteps = torch.tensor([500], device="cuda")
    noisy = parts.noise_scheduler.add_noise(latents, noise, timesteps)
    hidden = torch.randn(1, 77, 768, device="cuda", generator=generator)

    def forward_backward():
        optimizer.zero_grad()
        prediction = forward_in(dict(zip(names, optimizer.leaves(0), strict=True)), unet, noisy, timesteps, hidden)
        torch.nn.functional.mse_loss(prediction, noise).backward()

    def step():
        forward_backward()
        optimizer.step()

    return parts, step, forward_backward


def kernel_check() -> None:
    """The step's kernels against the same formula as tensor ops, on the GPU, 860 M values;
    gradients read in place, one copied (37 values: no whole number of aligned pieces)."""
    from herdbook.training import masters

    def run(kernels):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(n, device="cuda")) for n in (430_000_000, 37, 430_000_000)]
        opt = masters.FlatAdamW([{"params": params, "working_dtype": torch.bfloat16}], lr=1e-2, kernels=kernels)
        for _ in range(3):
            opt.zero_grad()
            for leaf in opt.leaves():
                leaf.grad = (torch.randn(leaf.shape, device="cuda") * 3).to(torch.bfloat16)
            opt.step()
        return opt.flat[0]

    a = run(False)
    b = run(masters.TritonKernels())
    for name in ("master", "exp_avg", "exp_avg_sq"):
        x, y = getattr(a, name), getattr(b, name)
        print(f"  kernels vs tensor ops, {name}: largest difference {(x - y).abs().max().item():.2e}")
    print(f"  working copy == masters rounded to bf16: {torch.equal(b.working, b.master.to(torch.bfloat16))}")


def in_layout(model: torch.nn.Module, layout: str) -> torch.nn.Module:
    from herdbook.training.layers import fast_layers

    if layout == "nchw":
        return model
    if layout == "torch":
        return model.to(memory_format=torch.channels_last)
    return fast_layers(model)


def sampling_case(layout: str):
    parts = sd15_components()
    unet = in_layout(parts.unet.to(torch.bfloat16).eval(), layout)
    if not layout:  # herdbook's, as training.components.sampling_pipeline sets it up
        from herdbook.training.layers import SamplingAttention

        unet.set_attn_processor(SamplingAttention())
    latents = torch.randn(8, 4, 64, 64, device="cuda", dtype=torch.bfloat16)
    hidden = torch.randn(8, 77, 768, device="cuda", dtype=torch.bfloat16)
    t = torch.tensor(500, device="cuda")

    @torch.no_grad()
    def call():
        return unet(latents, t, hidden).sample

    return parts, call


def decoding_case(layout: str):
    parts = sd15_components()
    vae = in_layout(parts.vae.to("cuda", torch.bfloat16).eval(), layout)
    latents = torch.randn(4, 4, 64, 64, device="cuda", dtype=torch.bfloat16)

    @torch.no_grad()
    def call():
        return vae.decode(latents / vae.config.scaling_factor).sample

    return parts, call


def layers_check() -> None:
    """training.layers's kernels against torch at the UNet's shapes (bf16, channels-last
    input): largest differences, and forward+backward times (eager: at batch 1 these are
    launch-bound, so the captured step's times are the ones that count)."""
    from herdbook.training.layers import GroupNormFunction

    shapes = [(1, 320, 64, 64), (1, 640, 32, 32), (1, 960, 32, 32), (1, 1280, 16, 16), (1, 2560, 8, 8),
              (1, 1920, 16, 16), (8, 320, 64, 64), (8, 1280, 16, 16), (4, 128, 512, 512)]  # fmt: skip
    began = time.perf_counter()
    for number, shape in enumerate(shapes):
        torch.manual_seed(0)
        x = (torch.randn(shape, device="cuda") * 2 + 1).to(torch.bfloat16).to(memory_format=torch.channels_last)
        w, b = (torch.randn(shape[1], device="cuda", dtype=torch.bfloat16) for _ in range(2))
        dy = torch.randn_like(x)
        ours = [t.clone().requires_grad_() for t in (x, w, b)]
        y = GroupNormFunction.apply(*ours, 32, 1e-5)
        y.backward(dy)
        if number == 0:
            torch.cuda.synchronize()
            print(f"  first call (compiles the four kernels): {time.perf_counter() - began:.2f} s")
        ref = [t.float().clone().requires_grad_() for t in (x, w, b)]
        r = torch.nn.functional.group_norm(ref[0], 32, ref[1], ref[2], 1e-5)
        r.backward(dy.float())
        gaps = [
            (a.float() - e).abs().max().item() / e.abs().max().item()
            for a, e in [(y, r), (ours[0].grad, ref[0].grad), (ours[1].grad, ref[1].grad), (ours[2].grad, ref[2].grad)]
        ]
        kernel = forward_backward_ms(lambda *t: GroupNormFunction.apply(*t, 32, 1e-5), (x, w, b), dy)
        native = forward_backward_ms(lambda x, w, b: torch.nn.functional.group_norm(x, 32, w, b, 1e-5), (x, w, b), dy)
        print(
            f"  {shape!s:<20} relative gaps y {gaps[0]:.1e} dx {gaps[1]:.1e} dw {gaps[2]:.1e} db {gaps[3]:.1e}; "
            f"forward+backward {kernel * 1e3:6.1f} us, torch (with its copies) {native * 1e3:6.1f} us",
            flush=True,
        )
    from herdbook.training.layers import GegluFunction

    def torch_geglu(projected):
        value, gate = projected.chunk(2, dim=-1)
        return value * torch.nn.functional.gelu(gate)

    for shape in [(1, 4096, 2560), (1, 256, 10240), (8, 4096, 2560)]:
        torch.manual_seed(0)
        projected = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
        dy = torch.randn(*shape[:-1], shape[-1] // 2, device="cuda", dtype=torch.bfloat16)
        ours, ref = projected.clone().requires_grad_(), projected.float().requires_grad_()
        y, r = GegluFunction.apply(ours), torch_geglu(ref)
        y.backward(dy)
        r.backward(dy.float())
        gaps = [(a.float() - e).abs().max().item() / e.abs().max().item() for a, e in [(y, r), (ours.grad, ref.grad)]]
        kernel = forward_backward_ms(GegluFunction.apply, (projected,), dy)
        native = forward_backward_ms(torch_geglu, (projected,), dy)
        print(
            f"  GEGLU {shape!s:<14} relative gaps out {gaps[0]:.1e} d(in) {gaps[1]:.1e}; "
            f"forward+backward {kernel * 1e3:6.1f} us, torch {native * 1e3:6.1f} us",
            flush=True,
        )
    import triton.testing
    from herdbook.training.layers import add_bias_

    for shape in [(8, 320, 64, 64), (8, 1280, 16, 16), (4, 128, 512, 512)]:
        torch.manual_seed(0)
        out = torch.randn(shape, device="cuda", dtype=torch.bfloat16).to(memory_format=torch.channels_last)
        bias = torch.randn(shape[1], device="cuda", dtype=torch.bfloat16)
        same = torch.equal(add_bias_(out.clone(), bias), out + bias.view(1, -1, 1, 1))
        kernel = triton.testing.do_bench(lambda o=out, b=bias: add_bias_(o, b))
        native = triton.testing.do_bench(lambda o=out, b=bias: o.add_(b.view(1, -1, 1, 1)))
        print(
            f"  bias {shape!s:<18} same bits as torch's add: {same}; {kernel * 1e3:6.1f} us, torch {native * 1e3:6.1f} us",
            flush=True,
        )


def profiled_call(call) -> tuple[float, list]:
    """Seconds of one warm ``call`` (after two warm-ups), and the profiler's events of another."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        call()
    torch.cuda.synchronize()
    began = time.perf_counter()
    call()
    torch.cuda.synchronize()
    wall = time.perf_counter() - began
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    return wall, prof.events()


def pipeline_check(steps: int = 25) -> None:
    """One whole sampling call as herdbook makes it (training.generate.draw): its wall time
    against its kernels' GPU time, and what made the host wait for the GPU, by caller."""
    from herdbook.training.components import inference_dtype, sampling_pipeline
    from herdbook.training.generate import draw

    pipeline = sampling_pipeline(
        sd15_components(), torch.device("cuda"), inference_dtype(torch.device("cuda")), graphs=True
    )

    wall, events = profiled_call(lambda: draw(pipeline, "an image of the oxenai ox", [0, 1, 2, 3], steps, 7.5, 512))
    busy = sum(e.device_time for e in events if e.device_type == torch.autograd.DeviceType.CUDA) / 1e3
    print(
        f"\n## one draw() of 4 images, {steps} DPM-Solver++ steps: {wall * 1e3:.0f} ms wall, {busy:.0f} ms of kernels"
    )
    kernels: dict[str, list[float]] = defaultdict(list)
    for e in events:
        if e.device_type == torch.autograd.DeviceType.CUDA:
            kernels[family(e.name)].append(e.device_time / 1e3)
    for name, times in sorted(kernels.items(), key=lambda kv: -sum(kv[1])):
        print(f"  {name:<14} {sum(times):7.2f} ms {len(times):6d} kernels")
    # where the GPU sat idle: gaps between one kernel's end and the next one's start
    timeline = sorted(
        (e.time_range.start, e.time_range.end, e.name)
        for e in events
        if e.device_type == torch.autograd.DeviceType.CUDA
    )
    gaps = [(b[0] - a[1], a[2], b[2]) for a, b in itertools.pairwise(timeline) if b[0] > a[1]]
    print(f"  GPU idle between kernels: {sum(g for g, _, _ in gaps) / 1e3:.1f} ms in {len(gaps)} gaps; the largest:")
    for gap, before, after in sorted(gaps, reverse=True)[:10]:
        print(f"    {gap / 1e3:7.2f} ms  after {before[:60]}  before {after[:60]}")
    waits: dict[str, list[float]] = defaultdict(list)
    for e in events:
        if "Synchronize" in e.name or "Memcpy" in e.name:
            chain, parent = [], e.cpu_parent
            while parent is not None and len(chain) < 3:
                chain.append(parent.name)
                parent = parent.cpu_parent
            waits[f"{e.name} <- {' <- '.join(chain)}"].append(e.cpu_time / 1e3)
    for name, times in sorted(waits.items(), key=lambda kv: -sum(kv[1])):
        print(f"  {sum(times):7.2f} ms {len(times):4d}x  {name[:150]}")


def forward_backward_ms(fn, inputs, dy) -> float:
    import triton.testing

    leaves = [t.clone().requires_grad_() for t in inputs]
    return triton.testing.do_bench(lambda: fn(*leaves).backward(dy))


def attention_context(name: str):
    from contextlib import nullcontext

    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {
        "default": None,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "flash": SDPBackend.FLASH_ATTENTION,
    }
    return nullcontext() if backends[name] is None else sdpa_kernel([backends[name]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="full,lora,sample")
    parser.add_argument("--attention", default="default", help="SDPA backends to try: default,cudnn,efficient,flash")
    parser.add_argument("--origins", action="store_true", help="Where the copy kernels come from, per case.")
    parser.add_argument("--sweep", action="store_true", help="Time the fused update's launch settings.")
    args = parser.parse_args()
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    began = time.perf_counter()
    print("## the layers' kernels (GroupNorm, GEGLU)", flush=True)
    layers_check()
    print("## the fused AdamW kernel", flush=True)
    kernel_check()
    torch.cuda.empty_cache()
    if args.sweep:
        optimizer_sweep()
        torch.cuda.empty_cache()
    for case in args.cases.split(","):
        if case.startswith("sample"):
            parts, fn = sampling_case(case.partition("-")[2])
            fns = {f"{case}: sampling UNet call, batch 8 (4 images with guidance)": fn}
        elif case == "pipeline":
            pipeline_check()
            continue
        elif case.startswith("decode"):
            parts, fn = decoding_case(case.partition("-")[2])
            fns = {f"{case}: VAE decode of 4 images": fn}
        else:
            parts, step, forward_backward = training_case(case)
            fns = {f"{case} step": step, f"{case} UNet forward+backward only": forward_backward}
        for attention in args.attention.split(","):
            for label, fn in fns.items():
                with attention_context(attention):
                    try:
                        report(f"{label}, attention={attention}", fn)
                        if args.origins and "step" not in label:
                            copy_origins(fn)
                    except RuntimeError as error:
                        print(f"\n## {label}, attention={attention}: failed: {str(error)[:200]}")
        del parts, fns
        torch.cuda.empty_cache()
    print(f"\n(profiled in {time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()

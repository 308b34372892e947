"""CUDA graphs: a piece of GPU work captured once and replayed, so its thousands of kernel
launches cost one. Batch-1 training and 4-image sampling are launch-bound on an H100 (the GPU
sits idle ~65% of an eager training step), so this is where their time goes.

A graph replays the same kernels on the same memory: inputs are copied into the graph's own
tensors before each replay, and shapes must not change (each new shape gets its own graph)."""

from __future__ import annotations

import torch

# a round's save thread copies weights to the host while its grid is captured (and a checkpoint
# writer may while its step is): in the default (global) mode any thread's synchronising copy
# breaks the capture, as it did on the H200
CAPTURE_MODE = "thread_local"


class CapturedStep:
    """A training step run eagerly for a few warm-up steps on a side stream, then captured
    once as a CUDA graph and replayed: the same kernels on the same memory, launched by the
    GPU instead of one by one from Python. Inputs are copied into the graph's own tensors.

    Warm-up steps are real steps (they train on their own batches); capture records without
    running, so the step that is captured is then run by its first replay."""

    WARMUP = 3

    def __init__(self, step) -> None:
        self.step, self.calls = step, 0
        self.graph = None
        self.inputs: tuple[torch.Tensor, ...] = ()
        self.output: torch.Tensor | None = None

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.graph is None and self.calls <= self.WARMUP:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                output = self.step(*inputs)
            torch.cuda.current_stream().wait_stream(side)
            return output
        if self.graph is None:
            self.inputs = tuple(x.clone() for x in inputs)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, capture_error_mode=CAPTURE_MODE):
                self.output = self.step(*self.inputs)
        else:
            for static, new in zip(self.inputs, inputs, strict=True):
                static.copy_(new, non_blocking=True)
        self.graph.replay()
        return self.output


class GraphedUNet(torch.nn.Module):
    """A sampling UNet whose call is captured per input shape and replayed; everything else
    (config, dtype, device) is the wrapped UNet's. Measured on an H100 at batch 8 (4 images
    with guidance): 40 ms a call eager, 28 ms replayed (bench/gpu_variants.txt).

    Calls it cannot replay (gradients on, conditioning beyond SDXL's added tensors, not on CUDA)
    run the UNet as it is."""

    WARMUP = 2

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, tuple[torch.Tensor, ...], torch.Tensor]] = {}

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["unet"], name)

    def forward(self, sample, timestep, encoder_hidden_states, return_dict: bool = True, **extra):
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        timestep = torch.as_tensor(timestep, device=sample.device)
        # SDXL's size and pooled-text conditioning are inputs like the others: replayed too
        added = extra.pop("added_cond_kwargs", None) or {}
        plain = (
            sample.device.type != "cuda"
            or torch.is_grad_enabled()
            or any(value is not None for value in extra.values())
            or not all(isinstance(value, torch.Tensor) for value in added.values())
        )
        if plain:
            added_kwargs = {"added_cond_kwargs": added} if added else {}
            return self.unet(sample, timestep, encoder_hidden_states, return_dict=return_dict, **added_kwargs, **extra)
        names = tuple(sorted(added))
        inputs = (sample, timestep, encoder_hidden_states, *(added[name] for name in names))
        key = (names, *((x.shape, x.dtype) for x in inputs))
        if key not in self.graphs:
            self.graphs[key] = self._capture(names, inputs)
        graph, static_inputs, static_output = self.graphs[key]
        for static, new in zip(static_inputs, inputs, strict=True):
            static.copy_(new)
        graph.replay()
        output = static_output.clone()  # the next replay overwrites the static tensor
        return UNet2DConditionOutput(sample=output) if return_dict else (output,)

    def _capture(self, names: tuple[str, ...], inputs: tuple[torch.Tensor, ...]):
        def call(sample, timestep, hidden, *added):
            conditioning = dict(zip(names, added, strict=True)) or None
            return self.unet(sample, timestep, hidden, added_cond_kwargs=conditioning, return_dict=False)[0]

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP):
                call(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        static_inputs = tuple(x.clone() for x in inputs)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode=CAPTURE_MODE):
            static_output = call(*static_inputs)
        return graph, static_inputs, static_output

"""Captured UNet calls (training/graphs.py) on a real GPU: skipped where there is none (CI)."""

import threading

import pytest
import torch
from herdbook.training.graphs import GraphedUNet
from herdbook.training.tiny import tiny_components

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU to capture graphs")


@torch.no_grad()
def test_a_grid_is_captured_while_another_thread_copies_weights_to_the_host():
    """A round's validation grid is captured while its save thread copies the weights to the
    host; a capture in the default (global) mode failed on the H200 with
    cudaErrorStreamCaptureInvalidated, and the round with it."""
    unet = tiny_components().unet.to("cuda").eval()
    graphed = GraphedUNet(unet)
    sample = torch.randn(2, unet.config.in_channels, 16, 16, device="cuda")
    hidden = torch.randn(2, 8, unet.config.cross_attention_dim, device="cuda")
    weights = [torch.randn(1024, 1024, device="cuda") for _ in range(8)]
    stop = threading.Event()

    def save() -> None:  # what save_pretrained does to each weight, again and again
        while not stop.is_set():
            for weight in weights:
                weight.cpu()

    saving = threading.Thread(target=save)
    saving.start()
    try:
        drawn = [graphed(sample, t, hidden, return_dict=False)[0] for t in range(5)]
    finally:
        stop.set()
        saving.join()
    assert len(graphed.graphs) == 1  # captured, not fallen back to the plain call
    plain = unet(sample, 4, hidden, return_dict=False)[0]
    torch.testing.assert_close(drawn[-1], plain, rtol=1e-3, atol=1e-3)

"""Loss helpers of the training loop, small enough to test on hand-made tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def diffusion_target(
    prediction_type: str, latents: torch.Tensor, noise: torch.Tensor, velocity: torch.Tensor | None
) -> torch.Tensor:
    """What the UNet should predict: the noise (epsilon models such as SD 1.x) or the velocity (v-prediction)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        if velocity is None:
            raise ValueError("v_prediction needs the velocity from the noise scheduler")
        return velocity
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def dreambooth_loss(
    prediction: torch.Tensor, target: torch.Tensor, with_prior: bool, prior_loss_weight: float = 1.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MSE on the instance half of the batch, plus the weighted MSE on the class half when
    prior preservation is on (the batch is instance examples first, class examples second).

    The parts stay tensors: reading them would wait for the GPU (and cannot happen inside a
    captured CUDA graph)."""
    if not with_prior:
        loss = F.mse_loss(prediction.float(), target.float())
        return loss, {"instance": loss}
    pred_instance, pred_prior = prediction.float().chunk(2)
    target_instance, target_prior = target.float().chunk(2)
    instance = F.mse_loss(pred_instance, target_instance)
    prior = F.mse_loss(pred_prior, target_prior)
    return instance + prior_loss_weight * prior, {"instance": instance, "prior": prior}


def step_generator(seed: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator that depends only on (seed, step): a resumed run draws the same noise,
    timesteps and images at each step as an uninterrupted one, with no RNG state to save."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + step)


def batch_indices(
    n_images: int, batch_size: int, generator: torch.Generator, weights: torch.Tensor | None = None
) -> list[int]:
    """Which instance images this step trains on; with weights, higher-rated images come up more often."""
    if weights is None:
        return torch.randint(0, n_images, (batch_size,), generator=generator).tolist()
    return torch.multinomial(weights.float(), batch_size, replacement=True, generator=generator).tolist()

"""Tiny random-weight Stable Diffusion parts built from config, as diffusers' own tests do: for
the tests and for `herdbook demo`, whose project trains and generates in seconds on a CPU (its
images are noise: the weights are random).

Nothing is downloaded: the tokenizer is the committed tiny one beside this module."""

from __future__ import annotations

from pathlib import Path

import torch

TOKENIZER = Path(__file__).resolve().parent / "tiny_tokenizer"
RESOLUTION = 32  # pixels; the tiny VAE halves it once


def tiny_components(seed: int = 0):
    from diffusers import UNet2DConditionModel
    from herdbook.training.components import Components, sd_inference_scheduler, sd_training_scheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=RESOLUTION // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=4,
        attention_head_dim=4,
    )
    vae = tiny_vae()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=2,
            hidden_size=32,
            intermediate_size=64,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=2,
            pad_token_id=1,
            vocab_size=520,
            max_position_embeddings=77,
        )
    )
    scheduler = sd_training_scheduler()
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER)
    return Components(unet, vae, text_encoder, tokenizer, scheduler, sd_inference_scheduler())


def tiny_vae(scaling_factor: float = 0.18215):
    """A VAE that halves the image once (SD-1.x's scaling factor unless given)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[8, 16],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=4,
        sample_size=RESOLUTION,
        scaling_factor=scaling_factor,
    )


def tiny_sdxl_components(seed: int = 0):
    """A tiny SDXL, as diffusers' SDXL tests build one: two text encoders (the second with a
    projection), their hidden states joined for cross-attention, and "text_time" conditioning."""
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from herdbook.training.components import SD_SCHEDULE, Components, sd_training_scheduler
    from herdbook.training.families import SDXL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    width = 16  # each encoder's; cross-attention sees both joined
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=RESOLUTION // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=2 * width,
        norm_num_groups=4,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 2),
        addition_embed_type="text_time",
        addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=6 * 4 + width,  # six size numbers + the pooled text
    )
    vae = tiny_vae(scaling_factor=0.13025)  # SDXL's
    config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=2,
        hidden_size=width,
        intermediate_size=32,
        layer_norm_eps=1e-05,
        num_attention_heads=2,
        num_hidden_layers=2,
        pad_token_id=1,
        vocab_size=520,
        max_position_embeddings=77,
        projection_dim=width,
    )
    text_encoder, text_encoder_2 = CLIPTextModel(config), CLIPTextModelWithProjection(config)
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER)
    sampler = EulerDiscreteScheduler(**SD_SCHEDULE, timestep_spacing="leading")
    return Components(
        unet,
        vae,
        text_encoder,
        tokenizer,
        sd_training_scheduler(),
        sampler,
        family=SDXL,
        text_encoder_2=text_encoder_2,
        tokenizer_2=CLIPTokenizer.from_pretrained(TOKENIZER),
    )


def save_tiny_pipeline(folder: Path, seed: int = 0, family: str = "sd1") -> Path:
    """A diffusers pipeline folder of tiny parts: what `from_pretrained` on a local folder reads."""
    from herdbook.training.components import make_pipeline

    parts = tiny_sdxl_components(seed) if family == "sdxl" else tiny_components(seed)
    make_pipeline(parts).save_pretrained(folder)
    return folder


def save_tiny_dino(folder: Path, seed: int = 0) -> Path:
    """A ViT of DINO's shape at 32 px, with its image processor: what [evaluation] dino_model reads."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=RESOLUTION, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64,
    )  # fmt: skip
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessor(size={"height": RESOLUTION, "width": RESOLUTION}).save_pretrained(folder)
    return folder


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A CLIP (text and vision towers, projections) at 32 px with the tiny tokenizer: what
    [evaluation] clip_model reads."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTextConfig,
        CLIPTokenizer,
        CLIPVisionConfig,
    )

    torch.manual_seed(seed)
    text = CLIPTextConfig(
        bos_token_id=0, eos_token_id=2, pad_token_id=1, vocab_size=520, hidden_size=32, intermediate_size=64,
        num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=77,
    )  # fmt: skip
    vision = CLIPVisionConfig(
        image_size=RESOLUTION, patch_size=8, hidden_size=32, intermediate_size=64, num_attention_heads=4,
        num_hidden_layers=2,
    )  # fmt: skip
    CLIPModel(
        CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)
    ).save_pretrained(folder)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": RESOLUTION}, crop_size={"height": RESOLUTION, "width": RESOLUTION}
        ),
        tokenizer=CLIPTokenizer.from_pretrained(TOKENIZER),
    )
    processor.save_pretrained(folder)
    return folder

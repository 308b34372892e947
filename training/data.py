"""Instance and class images as tensors the VAE can encode."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from PIL import Image, ImageOps

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


def image_files(folder: Path) -> list[Path]:
    """The images of an exported dataset version (its instance.csv order), or of any folder."""
    table = folder / "instance.csv"
    if table.exists():
        with table.open(newline="", encoding="utf-8") as handle:
            names = [Path(row["path"]).name for row in csv.DictReader(handle)]
        return [folder / name for name in names if (folder / name).exists()]
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def to_tensor(image: Image.Image, resolution: int) -> torch.Tensor:
    """Resize the short side to ``resolution``, centre-crop, scale to [-1, 1], channels first."""
    image = ImageOps.fit(image.convert("RGB"), (resolution, resolution), Image.Resampling.BICUBIC)
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).reshape(resolution, resolution, 3)
    return data.permute(2, 0, 1).float().div(127.5).sub(1.0)


def load_images(paths: list[Path], resolution: int) -> torch.Tensor:
    if not paths:
        raise ValueError("no images to train on")
    tensors = []
    for path in paths:
        with Image.open(path) as image:
            tensors.append(to_tensor(image, resolution))
    return torch.stack(tensors)

"""A demo project with cartoon oxen drawn here, so a newcomer can rate with no model at all."""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

COATS = {"white": (245, 243, 236), "brown": (140, 90, 55), "black": (45, 42, 40), "golden": (220, 170, 80)}
BACKGROUNDS = {
    "meadow": ((150, 205, 240), (110, 180, 90)),
    "beach": ((140, 200, 250), (235, 215, 160)),
    "snow": ((200, 215, 235), (250, 250, 252)),
}
HORNS = ("curved", "short", "long")
DEMO_MODEL = "demo-random-weights"  # the folder name of the demo's tiny random-weight model


def is_demo_model(base_model: str) -> bool:
    return Path(base_model).name == DEMO_MODEL


@dataclass(frozen=True)
class OxLook:
    coat: str
    background: str
    horns: str
    fluffy: bool

    @property
    def prompt(self) -> str:
        fluff = "fluffy " if self.fluffy else ""
        return f"a {fluff}{self.coat} cartoon ox with {self.horns} horns on a {self.background}"


def draw_ox(look: OxLook, seed: int, size: int = 256) -> Image.Image:
    rng = random.Random(seed)
    sky, ground = BACKGROUNDS[look.background]
    image = Image.new("RGB", (size, size), sky)
    draw = ImageDraw.Draw(image)
    horizon = int(size * rng.uniform(0.55, 0.7))
    draw.rectangle([0, horizon, size, size], fill=ground)
    coat = COATS[look.coat]
    s = size / 256
    cx, cy = size * rng.uniform(0.42, 0.58), size * rng.uniform(0.55, 0.62)
    for leg in (-50, -25, 25, 50):  # legs first, body over them
        draw.rounded_rectangle(
            [cx + leg * s - 8 * s, cy + 20 * s, cx + leg * s + 8 * s, cy + 75 * s],
            5 * s,
            fill=coat,
            outline=(30, 30, 30),
            width=2,
        )
    draw.ellipse([cx - 75 * s, cy - 40 * s, cx + 75 * s, cy + 45 * s], fill=coat, outline=(30, 30, 30), width=2)
    if look.fluffy:
        for _ in range(14):
            fx, fy = cx + rng.uniform(-65, 65) * s, cy + rng.uniform(-40, 10) * s
            r = rng.uniform(9, 15) * s
            draw.ellipse([fx - r, fy - r, fx + r, fy + r], fill=coat, outline=(30, 30, 30), width=1)
    hx = min(max(cx + rng.choice((-1, 1)) * 70 * s, 60 * s), size - 60 * s)
    hy = cy - 45 * s
    horn = {"curved": 28, "short": 14, "long": 42}[look.horns] * s
    for side in (-1, 1):
        tip = (hx + side * (22 * s + horn), hy - 30 * s - horn * (0.8 if look.horns == "curved" else 0.3))
        draw.polygon(
            [(hx + side * 14 * s, hy - 20 * s), (hx + side * 24 * s, hy - 10 * s), tip],
            fill=(235, 225, 190),
            outline=(60, 50, 30),
        )
    draw.ellipse([hx - 32 * s, hy - 30 * s, hx + 32 * s, hy + 32 * s], fill=coat, outline=(30, 30, 30), width=2)
    draw.ellipse([hx - 20 * s, hy + 8 * s, hx + 20 * s, hy + 30 * s], fill=(240, 180, 180), outline=(30, 30, 30))
    for side in (-1, 1):
        draw.ellipse([hx + side * 12 * s - 5 * s, hy - 10 * s, hx + side * 12 * s + 5 * s, hy], fill=(20, 20, 20))
        draw.ellipse(
            [hx + side * 7 * s - 2 * s, hy + 16 * s, hx + side * 7 * s + 2 * s, hy + 21 * s], fill=(90, 40, 40)
        )
    return image


def demo_looks() -> list[OxLook]:
    """Nine looks, four seeds each: enough variety for a rating session and the grid mode."""
    return [
        OxLook("white", "meadow", "curved", True),
        OxLook("white", "beach", "short", True),
        OxLook("white", "snow", "long", False),
        OxLook("brown", "meadow", "long", False),
        OxLook("brown", "snow", "curved", True),
        OxLook("black", "beach", "short", False),
        OxLook("black", "meadow", "curved", True),
        OxLook("golden", "beach", "long", True),
        OxLook("golden", "snow", "short", False),
    ]


def write_demo_images(folder: Path, per_look: int = 4, size: int = 256) -> Path:
    """Draw the demo oxen into ``folder`` with a ``prompts.csv``; returns the CSV's path."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for look_index, look in enumerate(demo_looks()):
        for n in range(per_look):
            seed = look_index * 100 + n
            name = f"{look.coat}-{look.background}-{n + 1}.png"
            draw_ox(look, seed, size).save(folder / name)
            rows.append({"file": name, "prompt": look.prompt, "seed": seed, "model": "demo-drawing"})
    table = folder / "prompts.csv"
    with table.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "prompt", "seed", "model"])
        writer.writeheader()
        writer.writerows(rows)
    return table

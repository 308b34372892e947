"""Checking image files before anything is stored: one place decides what counts as an image."""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

from herdbook.feedback.errors import ImportProblem
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".svg", ".tif", ".tiff"}
# MPO: the multi-picture JPEGs of many cameras; browsers and training both use the first picture
ACCEPTED_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "MPO": ".jpg", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp"}
PLAIN_MODES = {"RGB", "L"}
MAX_PIXELS = 40_000_000  # 6,300 px square; Dreambooth works at 512-1024 px
MAX_FILE_BYTES = 200 * 2**20  # read before decoding: a 2 GiB file named .png is not read whole


@dataclass(frozen=True)
class CheckedImage:
    data: bytes
    sha256: str
    suffix: str
    width: int
    height: int
    phash: str


def perceptual_hash(image: Image.Image) -> str:
    import imagehash

    return str(imagehash.phash(image.convert("RGB")))


def hash_distance(a: str, b: str) -> int:
    """Bits that differ between two perceptual hashes: 0 for the same picture re-encoded or resized."""
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def check_image(path: Path, max_pixels: int = MAX_PIXELS) -> CheckedImage:
    """Read and fully decode ``path``; raise ImportProblem saying why it is not usable."""
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError
        if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block or never end
            raise ImportProblem("not a regular file (a pipe, socket or device)")
        if info.st_size > MAX_FILE_BYTES:
            raise ImportProblem(f"{info.st_size:,} bytes, over the limit of {MAX_FILE_BYTES:,} for one image")
        data = path.read_bytes()
    except FileNotFoundError as error:
        raise ImportProblem("no such file") from error
    except IsADirectoryError as error:
        raise ImportProblem("it is a folder, not a file") from error
    except OSError as error:
        raise ImportProblem(f"cannot read it ({error.strerror or error})") from error
    return check_image_data(data, path.suffix, max_pixels)


def check_image_data(data: bytes, suffix: str = "", max_pixels: int = MAX_PIXELS) -> CheckedImage:
    """The same checks on bytes in memory (generated images, uploads)."""
    if not data:
        raise ImportProblem("the file is empty")
    if data.lstrip()[:5].lower() in (b"<?xml", b"<svg "):
        raise ImportProblem("it is an SVG (vector) file; herdbook rates raster images (PNG, JPEG, WebP)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImportProblem(
                        f"it is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}"
                    )
                if image.format not in ACCEPTED_FORMATS:
                    raise ImportProblem(f"{image.format} images are not supported (use PNG, JPEG or WebP)")
                suffix = ACCEPTED_FORMATS[image.format]
                image.load()  # decodes every pixel: catches truncated and corrupt files
                upright = normalised(image)
                if upright is not None:  # stored as the pixels raters and training will both see
                    buffer = io.BytesIO()
                    upright.save(buffer, format="PNG")
                    data, suffix, (width, height), image = buffer.getvalue(), ".png", upright.size, upright
                phash = perceptual_hash(image)
    except ImportProblem:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImportProblem(f"too many pixels to open safely ({error})") from error
    except UnidentifiedImageError as error:
        raise ImportProblem(f"not an image (the name says {suffix or 'nothing'}, the content is not)") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImportProblem(f"the image data is truncated or corrupt ({error})") from error
    return CheckedImage(data, hashlib.sha256(data).hexdigest(), suffix, width, height, phash)


def normalised(image: Image.Image) -> Image.Image | None:
    """The image as plain 8-bit RGB (or grey) pixels the right way up, or None when it is so
    already. Browsers honour EXIF orientation and training used not to; a 16-bit grey PNG read
    as 8 bits is almost pure white. Normalising once, at import, makes what raters see and
    what training reads the same pixels."""
    orientation = image.getexif().get(0x0112, 1)
    animated = getattr(image, "is_animated", False) and image.format != "MPO"  # MPO: browsers show its first
    if orientation == 1 and image.mode in PLAIN_MODES and not animated:
        return None
    if orientation != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        import numpy as np

        pixels = np.asarray(image, dtype=np.uint32)
        peak = 65535 if image.mode.startswith("I;16") or pixels.max() > 255 else 255
        image = Image.fromarray((pixels * 255 // peak).astype(np.uint8), mode="L")
    elif image.mode in ("RGBA", "LA", "P", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))  # transparent areas show white, as in the app
        flat.paste(rgba, mask=rgba.getchannel("A"))
        image = flat
    elif image.mode == "CMYK" and image.info.get("icc_profile"):
        image = cmyk_to_srgb(image)
    elif image.mode not in PLAIN_MODES:
        image = image.convert("RGB")  # CMYK without a profile: the plain formula, as browsers use
    else:
        image = image.copy()
    image.info.pop("exif", None)
    return image


def cmyk_to_srgb(image: Image.Image) -> Image.Image:
    """A CMYK image through its own ICC profile to sRGB, as a colour-managed viewer shows it.
    Pillow's plain conversion ignores the profile: a print-profiled photo came out ~20% lighter."""
    from PIL import ImageCms

    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(image.info["icc_profile"]))
        return ImageCms.profileToProfile(
            image, source, ImageCms.createProfile("sRGB"), renderingIntent=ImageCms.Intent.PERCEPTUAL, outputMode="RGB"
        )
    except (ImageCms.PyCMSError, OSError):  # a damaged profile: the plain formula, not a refusal
        return image.convert("RGB")


@functools.lru_cache(maxsize=4096)
def thumbnail_data_url(path: str, size: int = 96) -> str:
    """A small JPEG of the image as a data: URL, for tables. Candidate files are named by
    their hash and never change, so a cached thumbnail never goes stale."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def store_image(checked: CheckedImage, folder: Path) -> Path:
    """Write the bytes under their hash; the same bytes land on the same path, once."""
    target = folder / checked.sha256[:2] / f"{checked.sha256}{checked.suffix}"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(target.suffix + ".part")
        partial.write_bytes(checked.data)
        partial.replace(target)
    return target

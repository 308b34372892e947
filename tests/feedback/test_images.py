import base64
import io

from herdbook.feedback.images import thumbnail_data_url
from PIL import Image

from tests.conftest import make_image


def test_thumbnails_are_small_jpegs_in_a_data_url(tmp_path):
    path = make_image(tmp_path / "big.png", size=(512, 384))
    url = thumbnail_data_url(str(path))
    assert url.startswith("data:image/jpeg;base64,")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as thumb:
        assert thumb.size == (96, 72)


def _exif_rotated_jpeg(path, size=(40, 20)):
    """A landscape picture whose EXIF says 'turn it 90 degrees' (orientation 6), as phones write."""
    from PIL import Image

    image = Image.new("RGB", size, (200, 30, 30))
    image.paste((30, 30, 200), (0, 0, size[0] // 2, size[1]))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, format="JPEG", exif=exif.tobytes(), quality=95)
    return path


def test_exif_orientation_is_applied_once_at_import_so_raters_and_training_see_the_same(tmp_path):
    from herdbook.feedback.images import check_image, store_image
    from herdbook.training.data import to_tensor
    from PIL import Image

    checked = check_image(_exif_rotated_jpeg(tmp_path / "phone.jpg"))
    assert (checked.width, checked.height) == (20, 40)  # upright, as a browser shows it
    stored = store_image(checked, tmp_path / "store")
    with Image.open(stored) as image:
        assert image.size == (20, 40) and image.getexif().get(0x0112, 1) == 1
        top = image.getpixel((10, 2))
    assert top[2] > 150 and top[0] < 100  # the blue half is on top after the turn
    with Image.open(stored) as image:
        pixels = to_tensor(image, 8)  # what training reads: the same upright picture
    assert pixels[2, 0].mean() > pixels[0, 0].mean()


def test_a_16_bit_grey_png_keeps_its_greys(tmp_path):
    import numpy as np
    from herdbook.feedback.images import check_image, store_image
    from PIL import Image

    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")  # mode I;16
    stored = store_image(check_image(tmp_path / "deep.png"), tmp_path / "store")
    with Image.open(stored) as image:
        values = np.asarray(image.convert("L"))
    assert image.mode == "L" and values.min() < 10 and values.max() > 245 and 100 < values.mean() < 155


def test_multi_picture_camera_jpegs_are_accepted(tmp_path):
    from herdbook.feedback.images import check_image
    from PIL import Image

    first, second = Image.new("RGB", (32, 32), (10, 200, 10)), Image.new("RGB", (32, 32), (200, 10, 10))
    first.save(tmp_path / "camera.jpg", format="MPO", save_all=True, append_images=[second])
    checked = check_image(tmp_path / "camera.jpg")
    assert checked.suffix == ".jpg" and (checked.width, checked.height) == (32, 32)


def cmyk_print_profile() -> bytes:
    """A minimal ICC v2 output profile (CMYK -> Lab through a 2-point lut8) that prints every
    ink as neutral grey, darker the more ink: whoever honours it draws grey, the plain CMYK
    formula draws colour. Built here because no CMYK profile ships with Pillow or Debian's base."""
    import struct

    def s15(x):
        return struct.pack(">i", round(x * 65536))

    d50 = s15(0.9642) + s15(1.0) + s15(0.8249)
    clut = b""
    for c in (0, 1):
        for m in (0, 1):
            for y in (0, 1):
                for k in (0, 1):
                    lightness = (1 - 0.5 * (c + m + y) / 3) * (1 - 0.8 * k)
                    clut += bytes([round(255 * lightness), 128, 128])  # L*, a* = b* = 0
    identity = bytes(range(256))
    matrix = b"".join(s15(1.0 if i % 4 == 0 else 0.0) for i in range(9))
    lut = b"mft1" + bytes(4) + bytes([4, 3, 2, 0]) + matrix + identity * 4 + clut + identity * 3
    text = b"herdbook test CMYK\0"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(4 + 4 + 2 + 1 + 67)
    tags = [(b"desc", desc), (b"wtpt", b"XYZ " + bytes(4) + d50), (b"cprt", b"text" + bytes(4) + b"none\0"),
            (b"A2B0", lut)]  # fmt: skip
    offset, table, data = 128 + 4 + 12 * len(tags), b"", b""
    for signature, body in tags:
        body += bytes(-len(body) % 4)
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = 128 + 4 + len(table) + len(data)
    header = (struct.pack(">I", size) + bytes(4) + bytes([2, 0x10, 0, 0]) + b"prtr" + b"CMYK" + b"Lab "
              + bytes(12) + b"acsp" + bytes(28) + d50 + bytes(48))  # fmt: skip
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


def test_a_cmyk_jpeg_is_stored_in_the_colours_its_own_profile_gives():
    import numpy as np
    from herdbook.feedback.images import check_image_data

    cmyk = Image.new("CMYK", (32, 32), (20, 160, 220, 30))  # an orange, printed
    buffer = io.BytesIO()
    cmyk.save(buffer, format="JPEG", quality=95, icc_profile=cmyk_print_profile())
    checked = check_image_data(buffer.getvalue(), ".jpg")
    with Image.open(io.BytesIO(checked.data)) as stored:
        pixels = np.asarray(stored.convert("RGB"), dtype=float).reshape(-1, 3).mean(0)
    with Image.open(io.BytesIO(buffer.getvalue())) as original:
        plain = np.asarray(original.convert("RGB"), dtype=float).reshape(-1, 3).mean(0)
    assert plain[0] - plain[2] > 100  # the plain formula: orange
    assert np.ptp(pixels) < 6, pixels  # through the profile: grey, as a colour-managed viewer shows it


def test_an_inverted_adobe_cmyk_jpeg_keeps_its_colours():
    """Pillow writes CMYK JPEGs as Photoshop does (Adobe marker, inverted inks) and reads them back."""
    import numpy as np
    from herdbook.feedback.images import check_image_data

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 120, 40)).convert("CMYK").save(buffer, format="JPEG", quality=95)
    with Image.open(io.BytesIO(buffer.getvalue())) as written:
        assert written.mode == "CMYK" and written.info.get("adobe")
    checked = check_image_data(buffer.getvalue(), ".jpg")
    with Image.open(io.BytesIO(checked.data)) as stored:
        mean = np.asarray(stored.convert("RGB"), dtype=float).reshape(-1, 3).mean(0)
    assert np.abs(mean - [200, 120, 40]).max() < 4, mean

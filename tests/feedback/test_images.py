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

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

"""Inception-style preprocessing: crop statistics, central crop geometry, JPEG draft decoding."""

import io
import math

import numpy as np
import pytest
from PIL import Image

from data import augment


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _gradient(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    pixels = np.concatenate(
        [
            np.broadcast_to(x, (height, width, 1)),
            np.broadcast_to(y, (height, width, 1)),
            np.full((height, width, 1), 90.0),
        ],
        axis=2,
    )
    return Image.fromarray(pixels.astype(np.uint8))


def test_sample_crop_respects_area_and_aspect():
    rng = np.random.default_rng(0)
    for _ in range(300):
        left, top, right, bottom = augment.sample_crop(400, 300, rng)
        w, h = right - left, bottom - top
        assert 0 <= left and 0 <= top and right <= 400 + 1e-9 and bottom <= 300 + 1e-9
        if (w, h) != (400, 300):
            assert 0.1 - 1e-9 <= w * h / (400 * 300) <= 1.0 + 1e-9
            assert 3 / 4 - 1e-9 <= w / h <= 4 / 3 + 1e-9
    assert augment.sample_crop(10, 10, rng, area_range=(2.0, 3.0)) == (0.0, 0.0, 10.0, 10.0)


def test_central_crop_matches_manual_crop():
    image = _gradient(64, 48)
    out = augment.eval_image(_encode(image, "PNG"), 28)
    box = (4.0, 3.0, 60.0, 45.0)  # 0.875 of each side, centred
    assert augment.central_box(64, 48, 0.875) == box
    expected = np.asarray(image.resize((28, 28), Image.Resampling.BILINEAR, box=box))
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_any_mode_gives_rgb(mode):
    image = _gradient(30, 20).convert(mode)
    out = augment.train_image(_encode(image, "PNG"), 12, np.random.default_rng(1))
    assert out.shape == (12, 12, 3) and out.dtype == np.uint8


def test_jpeg_draft_decoding_close_to_full_decode():
    data = _encode(_gradient(800, 600), "JPEG", quality=95)
    out = augment.eval_image(data, 50)
    full = Image.open(io.BytesIO(data)).convert("RGB")
    expected = np.asarray(full.resize((50, 50), Image.Resampling.BILINEAR, box=augment.central_box(800, 600, 0.875)))
    assert np.abs(out.astype(int) - expected.astype(int)).mean() < 3


def test_flip_and_determinism():
    data = _encode(_gradient(40, 40), "PNG")
    outs = [augment.train_image(data, 16, np.random.default_rng(s)) for s in range(20)]
    # the gradient rises left to right unless flipped
    directions = {bool(o[:, -1, 0].mean() > o[:, 0, 0].mean()) for o in outs}
    assert directions == {True, False}
    np.testing.assert_array_equal(outs[3], augment.train_image(data, 16, np.random.default_rng(3)))


def test_to_float_range():
    x = augment.to_float(np.array([0, 255, 128], np.uint8))
    assert x.dtype == np.float32 and x[0] == -1.0 and x[1] == 1.0 and math.isclose(x[2], 128 / 127.5 - 1, abs_tol=1e-6)

"""Image preprocessing: Inception-style training crop/flip and evaluation central crop, any size.

Works on encoded bytes with PIL so that a JPEG can be decoded at a reduced scale (`draft`)
when the crop is much larger than the output, which is what keeps low-resolution
pre-training cheap on the host. Outputs are uint8 HxWx3; `to_float` maps them to [-1, 1]
(the models' input range): training batches stay uint8 up to the device and the train step maps them
there (4x fewer bytes from workers and to the device); evaluation batches are mapped on the host.
"""

from __future__ import annotations

import io
import math
from typing import Any

import jax.numpy as jnp
import numpy as np
from PIL import Image

# Slim's inception_preprocessing samples area in [0.05, 1] with min_object_covered=0.1 over the
# whole image, so the effective lower bound on the crop area is 0.1.
DEFAULT_AREA_RANGE = (0.1, 1.0)
DEFAULT_ASPECT_RANGE = (3.0 / 4.0, 4.0 / 3.0)
DEFAULT_CENTRAL_FRACTION = 0.875


def open_image(data: bytes) -> Image.Image:
    """Opens encoded image bytes lazily (header only); raises OSError when unreadable."""
    return Image.open(io.BytesIO(data))


def sample_crop(
    width: int,
    height: int,
    rng: np.random.Generator,
    area_range: tuple[float, float] = DEFAULT_AREA_RANGE,
    aspect_range: tuple[float, float] = DEFAULT_ASPECT_RANGE,
    max_attempts: int = 10,
) -> tuple[float, float, float, float]:
    """Random (left, top, right, bottom) box with area and aspect in range; whole image if none fits."""
    area = width * height
    log_lo, log_hi = math.log(aspect_range[0]), math.log(aspect_range[1])
    for _ in range(max_attempts):
        target = area * rng.uniform(*area_range)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = math.sqrt(target * aspect)
        h = math.sqrt(target / aspect)
        if w <= width and h <= height:
            left = rng.uniform(0, width - w)
            top = rng.uniform(0, height - h)
            return left, top, left + w, top + h
    return 0.0, 0.0, float(width), float(height)


def central_box(width: int, height: int, fraction: float) -> tuple[float, float, float, float]:
    """The centred box keeping `fraction` of each side (slim's `central_crop`)."""
    w, h = width * fraction, height * fraction
    left, top = (width - w) / 2, (height - h) / 2
    return left, top, left + w, top + h


def crop_resize(image: Image.Image, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """Decodes `image` (at a reduced JPEG scale when the box allows it), crops and resizes to size^2."""
    width, height = image.size
    scale = min(box[2] - box[0], box[3] - box[1]) / size
    if scale >= 2 and image.format == "JPEG":
        image.draft("RGB", (math.ceil(width / scale), math.ceil(height / scale)))
        sx, sy = image.size[0] / width, image.size[1] / height
        box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
    if image.mode != "RGB":
        image = image.convert("RGB")
    out = image.resize((size, size), resample=Image.Resampling.BILINEAR, box=box)
    return np.asarray(out, dtype=np.uint8)


def train_image(
    data: bytes,
    size: int,
    rng: np.random.Generator,
    flip: bool = True,
    area_range: tuple[float, float] = DEFAULT_AREA_RANGE,
) -> np.ndarray:
    """Inception training preprocessing: random area/aspect crop, resize, random horizontal flip.

    Glyph-like data, whose identity a mirror image or a small crop changes, narrows `area_range`
    and turns `flip` off.
    """
    image = open_image(data)
    box = sample_crop(*image.size, rng, area_range=area_range)
    out = crop_resize(image, box, size)
    if flip and rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def eval_image(data: bytes, size: int, fraction: float = DEFAULT_CENTRAL_FRACTION) -> np.ndarray:
    """Inception evaluation preprocessing: central crop of `fraction` per side, resize."""
    image = open_image(data)
    return crop_resize(image, central_box(*image.size, fraction), size)


# uint8 -> float32 [-1, 1] as a 256-entry table (x * 2/255 - 1 in float32): the same bits on the host
# and on a device, where XLA may fuse the multiply and subtract into one FMA that rounds differently.
_TO_FLOAT = np.arange(256, dtype=np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)


def to_float(images: Any) -> Any:
    """uint8 [0, 255] -> float32 [-1, 1]: numpy in, numpy out; a jax array (or a tracer inside a jitted
    step) in, a jax array out, with bit-identical values either way."""
    if isinstance(images, np.ndarray):
        return _TO_FLOAT[images]
    return jnp.asarray(_TO_FLOAT)[images]

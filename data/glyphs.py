"""Glyph inventory and rendering for the embedded default data.

The fonts are the TrueType files matplotlib installs (DejaVu, STIX, Computer Modern), so the
corpus needs no download. A character is a label only where a font really has it: its code
point is in the font's cmap, maps to a glyph other than `.notdef`, and that glyph has outlines.

Rendering is pure: `render_image(glyphs, style, size, seed_words)` draws with its own
`np.random.default_rng(seed_words)`, so the same arguments give the same pixels in any process.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import os
import unicodedata
from collections.abc import Sequence

import matplotlib
import numpy as np
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_DIR = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")

# Fonts with a real Unicode cmap. The Computer Modern files map TeX slots onto ASCII code points
# (cmsy10 puts symbols where letters are), so only the ones whose letters and digits sit at
# their own code points are used, and only for [A-Za-z0-9].
UNICODE_FONTS = (
    "DejaVuSans",
    "DejaVuSans-Bold",
    "DejaVuSans-Oblique",
    "DejaVuSans-BoldOblique",
    "DejaVuSansMono",
    "DejaVuSansMono-Bold",
    "DejaVuSansMono-Oblique",
    "DejaVuSansMono-BoldOblique",
    "DejaVuSerif",
    "DejaVuSerif-Bold",
    "DejaVuSerif-Italic",
    "DejaVuSerif-BoldItalic",
    "STIXGeneral",
    "STIXGeneralBol",
    "STIXGeneralItalic",
    "STIXGeneralBolIta",
)
ALNUM_ONLY_FONTS = ("cmr10", "cmss10", "cmti10", "cmtt10", "cmb10", "cmmi10")
ALL_FONTS = UNICODE_FONTS + ALNUM_ONLY_FONTS

_ALNUM = frozenset(range(0x30, 0x3A)) | frozenset(range(0x41, 0x5B)) | frozenset(range(0x61, 0x7B))


@dataclasses.dataclass(frozen=True)
class Group:
    """A label group: the middle level of the hierarchy (script -> group -> character)."""

    script: str
    ranges: tuple[tuple[int, int], ...]
    categories: tuple[str, ...] = ("L", "N", "P", "S")  # Unicode category prefixes kept
    name_prefix: str = ""  # e.g. "GREEK": the Unicode name must start with it


GROUPS: dict[str, Group] = {
    "latin_upper": Group("latin", ((0x41, 0x5B),)),
    "latin_lower": Group("latin", ((0x61, 0x7B),)),
    "latin_accented_upper": Group("latin", ((0xC0, 0x180),), ("Lu",)),
    "latin_accented_lower": Group("latin", ((0xC0, 0x180),), ("Ll",)),
    "digit": Group("number", ((0x30, 0x3A),)),
    "number_form": Group("number", ((0x2150, 0x2190),)),
    "enclosed": Group("number", ((0x2460, 0x2500),)),
    "greek_upper": Group("greek", ((0x391, 0x3AA),), ("Lu",)),
    "greek_lower": Group("greek", ((0x3B1, 0x3CA),), ("Ll",)),
    "greek_accented": Group("greek", ((0x386, 0x391), (0x3AA, 0x3B1), (0x3CA, 0x3CF)), ("L",)),
    "greek_symbol": Group("greek", ((0x3CF, 0x400),), ("L",), "GREEK"),
    "cyrillic_upper": Group("cyrillic", ((0x410, 0x430),)),
    "cyrillic_lower": Group("cyrillic", ((0x430, 0x450),)),
    "cyrillic_extended_upper": Group("cyrillic", ((0x400, 0x410),)),
    "cyrillic_extended_lower": Group("cyrillic", ((0x450, 0x460),)),
    "punctuation": Group(
        "symbol", ((0x21, 0x30), (0x3A, 0x41), (0x5B, 0x61), (0x7B, 0x7F), (0x2010, 0x205F)), ("P", "S")
    ),
    "latin1_symbol": Group("symbol", ((0xA1, 0xC0), (0xD7, 0xD8), (0xF7, 0xF8))),
    "currency": Group("symbol", ((0x20A0, 0x20D0),)),
    "letterlike": Group("symbol", ((0x2100, 0x2150),)),
    "arrow": Group("symbol", ((0x2190, 0x2200), (0x27F0, 0x2800), (0x2900, 0x2980))),
    "math": Group("symbol", ((0x2200, 0x2300),)),
    "math_extra": Group("symbol", ((0x27C0, 0x27F0), (0x2980, 0x2B00))),
    "technical": Group("symbol", ((0x2300, 0x2400),)),
    "geometric": Group("symbol", ((0x25A0, 0x2600),)),
    "misc_symbol": Group("symbol", ((0x2600, 0x2700),)),
    "dingbat": Group("symbol", ((0x2700, 0x27C0),)),
    "box": Group("drawing", ((0x2500, 0x2580),)),
    "block": Group("drawing", ((0x2580, 0x25A0),)),
    "braille": Group("drawing", ((0x2801, 0x2900),)),
}


def font_path(name: str) -> str:
    return os.path.join(FONT_DIR, f"{name}.ttf")


@functools.cache
def font_coverage(name: str) -> frozenset[int]:
    """The code points of all GROUPS that the font really draws: in the cmap, not `.notdef`, with outlines."""
    logging.getLogger("fontTools").setLevel(logging.ERROR)  # cm fonts: harmless timestamp warnings
    font = TTFont(font_path(name), lazy=True)
    cmap = font.getBestCmap() or {}
    glyf = font["glyf"] if "glyf" in font else None
    covered = set()
    for code in sorted({code for group in GROUPS.values() for code in group_members(group)}):
        glyph_name = cmap.get(code)
        if glyph_name in (None, ".notdef") or (name in ALNUM_ONLY_FONTS and code not in _ALNUM):
            continue
        if glyf is not None and glyf[glyph_name].numberOfContours == 0:
            continue  # a blank glyph (space-like): nothing would be drawn
        covered.add(code)
    font.close()
    return frozenset(covered)


@functools.cache
def group_members(group: Group) -> list[int]:
    """Candidate code points of a group, by range, Unicode category and name."""
    codes = []
    for lo, hi in group.ranges:
        for code in range(lo, hi):
            char = chr(code)
            name = unicodedata.name(char, "")
            if not name or not unicodedata.category(char).startswith(group.categories):
                continue
            if group.name_prefix and not name.startswith(group.name_prefix):
                continue
            codes.append(code)
    return codes


@dataclasses.dataclass(frozen=True)
class Style:
    """How images of one split look. Lengths are fractions of the glyph's slot; colours in [0, 1]."""

    palette: str  # "random": any colours with enough contrast; "paper": dark ink on light paper
    em_range: tuple[float, float]  # font em size / slot height
    max_rotation_deg: float
    min_contrast: float
    noise_std_max: float
    blur_prob: float
    blur_radius_max: float  # in stored pixels
    clutter_prob: float  # chance of 1-2 distractor strokes across the image
    supersample: int = 2


_BASE_EM = 96  # glyph masks are rasterised once at this em size, then scaled
_FONTS: dict[str, ImageFont.FreeTypeFont] = {}
_MASKS: dict[tuple[str, str], Image.Image] = {}


def glyph_mask(char: str, font: str) -> Image.Image:
    """Ink of one character at `_BASE_EM` px, cropped to its bounding box (cached per process)."""
    key = (char, font)
    if key not in _MASKS:
        if font not in _FONTS:
            _FONTS[font] = ImageFont.truetype(font_path(font), _BASE_EM)
        side = 4 * _BASE_EM
        canvas = Image.new("L", (side, side), 0)
        ImageDraw.Draw(canvas).text((side // 2, side // 2), char, fill=255, font=_FONTS[font], anchor="mm")
        box = canvas.getbbox()
        if box is None:
            raise ValueError(f"{font} draws nothing for U+{ord(char):04X}")
        _MASKS[key] = canvas.crop(box)
    return _MASKS[key]


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], np.float32)


def _background(rng: np.random.Generator, side: int, palette: str) -> np.ndarray:
    """Flat, gradient, smooth-noise or striped texture, float32 [side, side, 3]."""
    if palette == "paper":
        base = rng.uniform(0.72, 0.96) * np.array([1.0, rng.uniform(0.93, 1.0), rng.uniform(0.82, 1.0)])
        other = np.clip(base * rng.uniform(0.85, 1.05), 0, 1)
    else:
        base, other = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    base, other = base.astype(np.float32), other.astype(np.float32)
    kind = rng.choice(4, p=[0.3, 0.3, 0.25, 0.15])
    if kind == 0:
        return np.broadcast_to(base, (side, side, 3)).copy()
    if kind == 1:
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.linspace(-0.5, 0.5, side, dtype=np.float32)
        t = np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None] + 0.5
        return base + t[..., None] * (other - base)
    if kind == 2:
        cells = int(rng.integers(2, 6))
        grid = rng.uniform(0, 1, (cells, cells)).astype(np.float32)
        smooth = np.asarray(Image.fromarray(grid, "F").resize((side, side), Image.Resampling.BICUBIC))
        return base + np.clip(smooth, 0, 1)[..., None] * (other - base)
    period = int(rng.integers(3, 9))
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    stripes = (np.floor((np.cos(angle) * xx + np.sin(angle) * yy) / period) % 2)[..., None]
    return base + 0.35 * stripes * (other - base)


def _ink_colour(rng: np.random.Generator, background: np.ndarray, style: Style) -> np.ndarray:
    """A colour at least `min_contrast` away in luminance from the mean background."""
    bg_lum = float(_luminance(background.reshape(-1, 3).mean(0)))
    if style.palette == "paper":
        dark = rng.uniform(0.0, 0.3)
        tint = rng.uniform(0.0, 0.25, 3)
        return np.clip(dark + tint * np.array([0.3, 0.3, 1.0]), 0, 1).astype(np.float32)
    for _ in range(8):
        colour = rng.uniform(0, 1, 3).astype(np.float32)
        if abs(float(_luminance(colour)) - bg_lum) >= style.min_contrast:
            return colour
    return np.full(3, 0.0 if bg_lum > 0.5 else 1.0, np.float32)


def _place_glyph(
    rng, char: str, font: str, slot: tuple[int, int, int, int], style: Style
) -> tuple[Image.Image, int, int]:
    """Scales, rotates and positions one glyph inside slot (x0, y0, w, h); returns (alpha, x, y)."""
    x0, y0, width, height = slot
    mask = glyph_mask(char, font)
    scale = height * rng.uniform(*style.em_range) / _BASE_EM
    w, h = max(1, round(mask.width * scale)), max(1, round(mask.height * scale))
    mask = mask.resize((w, h), Image.Resampling.BILINEAR)
    angle = rng.uniform(-style.max_rotation_deg, style.max_rotation_deg)
    mask = mask.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    fit = min(1.0, 0.95 * width / mask.width, 0.95 * height / mask.height)
    if fit < 1.0:
        mask = mask.resize((max(1, int(mask.width * fit)), max(1, int(mask.height * fit))), Image.Resampling.BILINEAR)
    x = x0 + int(rng.integers(0, width - mask.width + 1))
    y = y0 + int(rng.integers(0, height - mask.height + 1))
    return mask, x, y


def render_image(glyphs: Sequence[tuple[str, str]], style: Style, size: int, seed_words: Sequence[int]) -> np.ndarray:
    """Draws 1 or 2 (char, font) glyphs side by side on a textured background; uint8 [size, size, 3]."""
    rng = np.random.default_rng(list(seed_words))
    side = size * style.supersample
    image = _background(rng, side, style.palette)
    if rng.uniform() < style.clutter_prob:
        clutter = Image.new("L", (side, side), 0)
        draw = ImageDraw.Draw(clutter)
        for _ in range(int(rng.integers(1, 3))):
            points = [tuple(int(v) for v in rng.integers(0, side, 2)) for _ in range(2)]
            draw.line(points, fill=255, width=int(rng.integers(1, style.supersample + 2)))
        alpha = np.asarray(clutter, np.float32)[..., None] / 255.0 * rng.uniform(0.3, 0.7)
        image = image * (1 - alpha) + _ink_colour(rng, image, style) * alpha
    slot_width = side // len(glyphs)
    for position, (char, font) in enumerate(glyphs):
        mask, x, y = _place_glyph(rng, char, font, (position * slot_width, 0, slot_width, side), style)
        alpha = np.zeros((side, side, 1), np.float32)
        alpha[y : y + mask.height, x : x + mask.width, 0] = np.asarray(mask, np.float32) / 255.0
        image = image * (1 - alpha) + _ink_colour(rng, image, style) * alpha
    pixels = Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")
    pixels = pixels.resize((size, size), Image.Resampling.BOX)
    if rng.uniform() < style.blur_prob:
        pixels = pixels.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, style.blur_radius_max)))
    noise = rng.normal(0.0, rng.uniform(0, style.noise_std_max) * 255, (size, size, 3))
    return np.clip(np.asarray(pixels, np.float32) + noise + 0.5, 0, 255).astype(np.uint8)


def encode_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def render_png_chunk(task: tuple[Style, int, list[tuple[list[int], list[tuple[str, str]]]]]) -> list[bytes]:
    """Pool worker: PNG bytes for each (seed_words, glyphs) of a chunk, in order."""
    style, size, items = task
    return [encode_png(render_image(glyphs, style, size, seed_words)) for seed_words, glyphs in items]

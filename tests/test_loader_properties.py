"""Property tests of the safe loader with hypothesis: for any size, Pillow mode and format,
for random bytes, and for valid images cut short or with bytes overwritten, ``decode`` and
``load_image`` either give an (h, w, 3) uint8 RGB image of sane size or raise an
``ImageError`` subclass, never anything else, and an image they give always hashes.

The example counts are small by default, and the runs derandomised (the same examples every
time). For a longer, randomised run: ``COPYSCAN_HYPOTHESIS_EXAMPLES=2000 pytest
tests/test_loader_properties.py`` (hypothesis prints the seed of any failure).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, note
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from PIL import Image

from detector.config import Settings
from detector.errors import ImageError, UnhashableImage
from detector.intake.loader import LoadedImage, content_hash, decode, load_image, to_rgb
from detector.intake.prepare import prepare_bytes
from detector.stage1.hashing import DIHEDRAL, dihedral_probes, image_codes

SETTINGS = Settings()

# Pillow warns about the corrupt metadata these tests feed it; the warnings are expected.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL")

_LONG = os.environ.get("COPYSCAN_HYPOTHESIS_EXAMPLES")


def budget(default: int) -> hsettings:
    """Hypothesis settings: ``default`` examples, derandomised and without an example
    database (nothing written to the work tree), or as many as COPYSCAN_HYPOTHESIS_EXAMPLES
    says, randomised."""
    return hsettings(
        max_examples=int(_LONG) if _LONG else default,
        derandomize=not _LONG,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --------------------------------------------------------------------------- images of every mode

# Which allowed formats Pillow can write each mode to (a mode may come back as another one).
FORMATS_FOR_MODE: dict[str, tuple[str, ...]] = {
    "1": ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"),
    "L": ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"),
    "LA": ("PNG", "GIF", "TIFF", "WEBP"),
    "P": ("PNG", "GIF", "BMP", "TIFF", "WEBP"),
    "PA": ("TIFF", "WEBP"),
    "RGB": ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"),
    "RGBA": ("PNG", "GIF", "BMP", "TIFF", "WEBP"),
    "RGBX": ("JPEG", "TIFF", "WEBP"),
    "CMYK": ("JPEG", "TIFF", "WEBP"),
    "YCbCr": ("JPEG", "TIFF", "WEBP"),
    "LAB": ("TIFF", "WEBP"),
    "HSV": ("WEBP",),
    "I": ("TIFF", "WEBP"),
    "I;16": ("PNG", "TIFF", "WEBP"),
    "I;16B": ("PNG", "TIFF", "WEBP"),
    "F": ("TIFF",),  # Pillow clips floats to 0..255 for the others: a flat image
}
# Modes no format stores, which to_rgb must still handle.
IN_MEMORY_ONLY = ("La", "RGBa", "I;16L", "I;16N")


def make_image(mode: str, h: int, w: int, seed: int, special_floats: bool = False) -> Image.Image:
    """A random image of ``mode`` and size ``w`` x ``h``."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    grey = rgb[..., 0]
    alpha = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
    if mode == "1":
        return Image.fromarray(grey > 127)
    if mode in ("L", "LA", "La"):
        im = Image.fromarray(grey)
        if mode != "L":
            im = Image.merge("LA", [im, alpha])
        return im.convert(mode) if mode == "La" else im
    if mode in ("P", "PA"):
        im = Image.fromarray((grey % 16).astype(np.uint8), mode="P")
        im.putpalette(rng.integers(0, 256, 16 * 3, dtype=np.uint8).tobytes())
        if mode == "PA":
            im = im.convert("PA")
            im.putalpha(alpha)
        return im
    if mode in ("RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        if mode in ("RGBA", "RGBa"):
            im = Image.fromarray(np.dstack([rgb, np.asarray(alpha)]))
            return im.convert(mode) if mode == "RGBa" else im
        if mode == "CMYK":
            return Image.frombytes("CMYK", (w, h), rng.integers(0, 256, (h, w, 4), dtype=np.uint8).tobytes())
        if mode in ("YCbCr", "LAB", "HSV"):
            return Image.frombytes(mode, (w, h), rgb.tobytes())
        im = Image.fromarray(rgb)
        return im.convert(mode) if mode == "RGBX" else im
    if mode == "I":
        return Image.fromarray(rng.integers(-(2**31), 2**31 - 1, (h, w), dtype=np.int64).astype(np.int32))
    if mode.startswith("I;16"):
        v = rng.integers(0, 65536, (h, w), dtype=np.uint16)
        order = ">" if mode == "I;16B" else "<"
        return Image.frombytes(mode, (w, h), v.astype(order + "u2").tobytes())
    if mode == "F":
        f = rng.normal(0.5, 0.3, (h, w)).astype(np.float32)
        if special_floats:
            f.flat[rng.integers(0, f.size, max(1, f.size // 10))] = rng.choice(
                [np.nan, np.inf, -np.inf, 1e38]
            )
        return Image.fromarray(f)
    raise AssertionError(f"no maker for {mode}")


def encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def check_contract(data: bytes, size: tuple[int, int] | None = None) -> LoadedImage | None:
    """Decode ``data``: an ImageError is fine (None is returned); anything else raised fails
    the test. A decoded image must be sane, of ``size`` (w, h) when given, and must hash."""
    try:
        loaded = decode(data, SETTINGS)
    except ImageError as e:
        if currently_in_test_context():
            event(type(e).__name__)  # shown by --hypothesis-show-statistics
        return None
    if currently_in_test_context():
        event("decoded")
    rgb = loaded.rgb
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert rgb.flags["C_CONTIGUOUS"]
    h, w = rgb.shape[:2]
    assert min(h, w) >= SETTINGS.min_side and h * w <= SETTINGS.max_pixels
    # Whole, or decoded smaller (decode_side) and still at least decode_side on the longer side.
    shrunk = w <= loaded.width and h <= loaded.height and max(w, h) >= SETTINGS.decode_side
    assert (loaded.width, loaded.height) == (w, h) or shrunk
    assert loaded.sha256 == content_hash(data)
    if size is not None:
        assert (w, h) == size
    check_hashes(rgb)
    prepared = prepare_bytes("x", data, loaded.sha256, SETTINGS, catalog=True)
    assert prepared.ok and prepared.error is None, prepared.error
    assert prepared.small is not None and prepared.small.shape == (224, 224, 3)
    return loaded


def check_hashes(rgb: np.ndarray) -> None:
    codes = image_codes(rgb)
    assert 0 <= codes.phash < 2**64 and 0 <= codes.dhash < 2**64
    grey = Image.fromarray(rgb, mode="RGB").convert("L")
    assert len(dihedral_probes(grey, tuple(DIHEDRAL))) == len(DIHEDRAL)


modes = st.sampled_from(sorted(FORMATS_FOR_MODE))
sides = st.integers(1, 300)
seeds = st.integers(0, 2**32 - 1)


@st.composite
def encoded_images(draw: st.DrawFn, max_side: int = 300) -> tuple[bytes, str, str, tuple[int, int]]:
    """(bytes, mode, format, (w, h)) of a random image in a format that can hold its mode."""
    mode = draw(modes)
    fmt = draw(st.sampled_from(FORMATS_FOR_MODE[mode]))
    w, h = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    im = make_image(mode, h, w, draw(seeds), special_floats=draw(st.booleans()))
    return encode(im, fmt), mode, fmt, (w, h)


@budget(60)
@given(encoded_images())
def test_any_size_mode_and_format_decodes_or_is_unhashable(
    case: tuple[bytes, str, str, tuple[int, int]],
) -> None:
    data, mode, fmt, (w, h) = case
    note(f"{mode} as {fmt}, {w}x{h}")
    try:
        loaded = decode(data, SETTINGS)
    except UnhashableImage as e:
        # a valid image is refused only for being too small, (too) flat or a strip
        strip = max(w, h) > SETTINGS.max_aspect * min(w, h)
        assert min(w, h) < SETTINGS.min_side or "flat" in str(e) or strip, str(e)
        event("unhashable")
        return
    event("decoded")
    assert loaded.rgb.shape == (h, w, 3) and loaded.rgb.dtype == np.uint8
    assert check_contract(data, (w, h)) is not None


@pytest.mark.parametrize(
    ("mode", "fmt"), [(m, f) for m, fmts in FORMATS_FOR_MODE.items() for f in fmts], ids=lambda v: str(v)
)
def test_every_mode_and_format_pair_decodes(mode: str, fmt: str) -> None:
    # guards the table the property draws from: every pair in it is a valid, loadable image
    data = encode(make_image(mode, 20, 30, seed=1), fmt)
    assert check_contract(data, (30, 20)) is not None


@pytest.mark.parametrize("mode", sorted(FORMATS_FOR_MODE) + list(IN_MEMORY_ONLY))
def test_to_rgb_handles_every_mode_at_any_size(mode: str) -> None:
    # every mode once for sure (the property below draws only some of them by default)
    for h, w in ((1, 1), (7, 3)):
        out = to_rgb(make_image(mode, h, w, seed=2))
        assert out.shape == (h, w, 3) and out.dtype == np.uint8


@budget(40)
@given(st.sampled_from(sorted(FORMATS_FOR_MODE) + list(IN_MEMORY_ONLY)), sides, sides, seeds, st.booleans())
def test_to_rgb_handles_every_mode(mode: str, w: int, h: int, seed: int, special: bool) -> None:
    out = to_rgb(make_image(mode, h, w, seed, special_floats=special))
    assert out.shape == (h, w, 3) and out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
    check_hashes(out)


# --------------------------------------------------------------------------- hostile bytes

MAGICS = [
    b"",
    b"\x89PNG\r\n\x1a\n",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    b"\xff\xd8\xff",
    b"\xff\xd8\xff\xe1",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"RIFF\x00\x10\x00\x00WEBPVP8 ",
    b"RIFF\x00\x10\x00\x00WEBPVP8L",
    b"RIFF\x00\x10\x00\x00WEBPVP8X",
]


@budget(150)
@given(st.sampled_from(MAGICS), st.binary(max_size=1024))
def test_random_bytes_after_any_magic(magic: bytes, tail: bytes) -> None:
    check_contract(magic + tail)


@budget(60)
@given(encoded_images(max_side=64), st.data())
def test_truncated_image(case: tuple[bytes, str, str, tuple[int, int]], data: st.DataObject) -> None:
    blob, mode, fmt, size = case
    cut = len(blob) * data.draw(st.integers(0, 999), label="per mille") // 1000
    note(f"{mode} as {fmt}, {size}, cut at {cut} of {len(blob)}")
    check_contract(blob[:cut], size)


@budget(60)
@given(encoded_images(max_side=64), st.data())
def test_overwritten_bytes(case: tuple[bytes, str, str, tuple[int, int]], data: st.DataObject) -> None:
    blob, mode, fmt, _size = case
    b = bytearray(blob)
    # headers hold the fields worth breaking: aim at the first 100 bytes as often as anywhere
    for _ in range(data.draw(st.integers(1, 8), label="edits")):
        limit = data.draw(st.sampled_from([min(len(b), 100), len(b)]))
        pos = data.draw(st.integers(0, limit - 1))
        b[pos] = data.draw(st.integers(0, 255))
    note(f"{mode} as {fmt}")
    # overwriting a size field may change the size: no size is asked for
    check_contract(bytes(b))


@budget(20)
@given(encoded_images(max_side=64), st.integers(0, 3))
def test_load_image_from_disk_keeps_the_contract(
    tmp_path_factory: pytest.TempPathFactory, case: tuple[bytes, str, str, tuple[int, int]], cut: int
) -> None:
    blob, _mode, _fmt, size = case
    path: Path = tmp_path_factory.mktemp("prop") / "image.bin"
    data = blob if cut == 0 else blob[: len(blob) * cut // 4]
    path.write_bytes(data)
    try:
        loaded = load_image(path, SETTINGS)
    except ImageError:
        return
    assert loaded.rgb.shape == (size[1], size[0], 3)
    assert loaded.sha256 == content_hash(data)

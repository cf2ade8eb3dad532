"""Hostile input for the safe loader, beyond tests/test_imaging.py: bombs in every allowed
format and between 1x and 2x the limit, OpenCV never decoding untrusted bytes, animations
with many frames, every EXIF orientation, zero-sized images, paths that vanish or change
between listing and reading, unlistable folders, and script text in EXIF.

Every image is generated here from seeded numpy arrays or written byte by byte.
"""

from __future__ import annotations

import ast
import io
import os
import stat
import struct
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageFile, WebPImagePlugin

from cli.main import cli
from detector.config import Settings
from detector.errors import (
    CorruptImage,
    DecompressionBomb,
    ImageError,
    UnhashableImage,
    UnreadablePath,
    UnsupportedFormat,
)
from detector.intake.loader import BACKGROUND_RGB, decode, load_image, read_bytes
from detector.intake.prepare import prepare_batch
from detector.intake.sources import expand_sources
from tests.conftest import textured
from tests.test_imaging import black_bilevel_png

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = Settings()
WHITE = np.array(BACKGROUND_RGB, np.uint8)


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


class Forbidden(BaseException):
    """Raised by a patched function that must not run; a BaseException, so no
    ``except Exception`` in the code under test can swallow it."""


@pytest.fixture
def no_pixel_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt by Pillow to decode pixel data fails the test."""

    def forbidden(*_args: object, **_kwargs: object) -> None:
        raise Forbidden("Pillow decoded pixel data")

    monkeypatch.setattr(ImageFile.ImageFile, "load", forbidden)
    monkeypatch.setattr(WebPImagePlugin.WebPImageFile, "load", forbidden)


# Every OpenCV entry point that reads encoded image bytes or files.
OPENCV_DECODERS = (
    "imread",
    "imdecode",
    "imreadmulti",
    "imdecodemulti",
    "imreadanimation",
    "imdecodeanimation",
    "imcount",
    "VideoCapture",
)


@pytest.fixture
def no_opencv_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any call to an OpenCV image decoder fails the test."""

    def forbidden(*_args: object, **_kwargs: object) -> None:
        raise Forbidden("OpenCV was handed encoded bytes")

    for name in OPENCV_DECODERS:
        if hasattr(cv2, name):
            monkeypatch.setattr(cv2, name, forbidden)


# --------------------------------------------------------------------------- OpenCV


def test_no_code_reaches_an_opencv_decoder() -> None:
    # Only Pillow, behind the header checks, decodes untrusted bytes: no module of copyscan
    # names an OpenCV decoder at all (OpenCV only resizes and matches arrays we hold).
    found = []
    for folder in ("detector", "cli"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", None)
                if name in OPENCV_DECODERS:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    assert found == []


def test_opencv_fixture_does_block_opencv(no_opencv_decoding: None) -> None:
    # guards the fixture the tests below rely on
    with pytest.raises(Forbidden):
        cv2.imdecode(np.frombuffer(encode(Image.fromarray(noise(8, 8)), "PNG"), np.uint8), cv2.IMREAD_COLOR)


def test_20000_square_bomb_is_refused_before_pillow_or_opencv_decode(
    tmp_path: Path, no_pixel_decoding: None, no_opencv_decoding: None
) -> None:
    data = black_bilevel_png(20000, 20000)
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    with pytest.raises(DecompressionBomb):
        decode(data, SETTINGS)
    with pytest.raises(DecompressionBomb):
        load_image(path, SETTINGS)
    (item,) = prepare_batch([str(path)], SETTINGS)
    assert item.error is not None and item.error.startswith("DecompressionBomb: ")


def test_front_of_pipeline_never_calls_an_opencv_decoder(tmp_path: Path, no_opencv_decoding: None) -> None:
    # The whole front (decode, codes, trim, stage-3 grey, CNN resize) runs with every OpenCV
    # decoder disabled, for good images as for bad ones.
    good = tmp_path / "good.jpg"
    Image.fromarray(textured(1)).save(good, quality=90)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(black_bilevel_png(9000, 9000))
    out = prepare_batch([str(good), str(bomb)], SETTINGS, catalog=True)
    assert out[0].ok and out[0].small is not None and out[0].grey is not None
    assert out[1].error is not None and out[1].error.startswith("DecompressionBomb: ")


class Stop(Exception):
    """Stands for what a signal handler raises (the CLI's SIGTERM stop is an Exception)."""


def test_an_exception_from_a_signal_handler_passes_through_the_loader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The loader turns Pillow's failures into CorruptImage, but a stop requested while Pillow
    # decodes must still stop the run, not become one more bad item.
    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise Stop(15)

    monkeypatch.setattr(ImageFile.ImageFile, "load", interrupted)
    with pytest.raises(Stop):
        decode(encode(Image.fromarray(noise(16, 16)), "PNG"), SETTINGS)


# --------------------------------------------------------------------------- bombs in every format

# Pillow warns above MAX_IMAGE_PIXELS (89.5 MP) and refuses only above twice that: between
# the two, and between our limit (64 MP) and Pillow's, only our own header check stands.
OVER_OURS = (8001, 8000)  # 64.008 MP: over our limit, under Pillow's warning
PILLOW_1X_2X = (12000, 8000)  # 96 MP: Pillow would only warn
OVER_PILLOW_2X = (16384, 16384)  # 268 MP: Pillow refuses too (16384 is WebP's largest side)
assert OVER_OURS[0] * OVER_OURS[1] > SETTINGS.max_pixels
assert Image.MAX_IMAGE_PIXELS is not None
assert Image.MAX_IMAGE_PIXELS < PILLOW_1X_2X[0] * PILLOW_1X_2X[1] < 2 * Image.MAX_IMAGE_PIXELS
assert OVER_PILLOW_2X[0] * OVER_PILLOW_2X[1] > 2 * Image.MAX_IMAGE_PIXELS


def _small(fmt: str, **params: object) -> bytes:
    return encode(Image.fromarray(noise(8, 8, seed=1)), fmt, **params)


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) is patched to declare ``width`` x ``height``."""
    data = bytearray(_small("JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_declaring(width: int, height: int) -> bytes:
    """A small GIF whose logical screen and first frame are patched to ``width`` x ``height``."""
    data = bytearray(_small("GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    pos = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    while data[pos] == 0x21:  # skip extension blocks up to the image descriptor
        pos += 2
        while data[pos]:
            pos += data[pos] + 1
        pos += 1
    assert data[pos] == 0x2C
    data[pos + 5 : pos + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def bmp_declaring(width: int, height: int) -> bytes:
    data = bytearray(_small("BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def tiff_declaring(width: int, height: int) -> bytes:
    """A small little-endian TIFF whose ImageWidth and ImageLength tags are patched."""
    data = bytearray(_small("TIFF"))
    assert data[:4] == b"II*\x00"
    ifd = struct.unpack_from("<I", data, 4)[0]
    (count,) = struct.unpack_from("<H", data, ifd)
    patched = 0
    for k in range(count):
        entry = ifd + 2 + 12 * k
        tag = struct.unpack_from("<H", data, entry)[0]
        if tag in (256, 257):
            struct.pack_into("<HHII", data, entry, tag, 4, 1, width if tag == 256 else height)
            patched += 1
    assert patched == 2
    return bytes(data)


def webp_declaring(width: int, height: int) -> bytes:
    """A valid animated WebP (VP8X) whose canvas is patched to ``width`` x ``height``: frames
    may be smaller than their canvas, so this is a well-formed file."""
    frames = [Image.fromarray(noise(8, 8, seed=s)) for s in (1, 2)]
    data = bytearray(encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True))
    assert data[12:16] == b"VP8X"
    data[24:27] = (width - 1).to_bytes(3, "little")
    data[27:30] = (height - 1).to_bytes(3, "little")
    return bytes(data)


def webp_lossless_declaring(width: int, height: int) -> bytes:
    """A still lossless WebP (VP8L) whose bitstream header is patched to ``width`` x ``height``."""
    data = bytearray(_small("WEBP", lossless=True))
    assert data[12:16] == b"VP8L" and data[20] == 0x2F
    bits = struct.unpack_from("<I", data, 21)[0]
    bits = (bits & ~0xFFFFFFF) | (width - 1) | ((height - 1) << 14)
    struct.pack_into("<I", data, 21, bits)
    return bytes(data)


def png_declaring(width: int, height: int) -> bytes:
    return black_bilevel_png(width, height)


DECLARING: dict[str, Callable[[int, int], bytes]] = {
    "png": png_declaring,
    "jpeg": jpeg_declaring,
    "gif": gif_declaring,
    "bmp": bmp_declaring,
    "tiff": tiff_declaring,
    "webp-vp8x": webp_declaring,
    "webp-vp8l": webp_lossless_declaring,
}


@pytest.mark.parametrize("fmt", list(DECLARING))
def test_crafted_headers_declare_what_they_say(fmt: str) -> None:
    # guards the helpers: Pillow reads the declared size from each crafted header
    with Image.open(io.BytesIO(DECLARING[fmt](300, 200))) as im:
        assert im.size == (300, 200)


@pytest.mark.parametrize("size", [OVER_OURS, PILLOW_1X_2X, OVER_PILLOW_2X], ids=["64M", "96M", "268M"])
@pytest.mark.parametrize("fmt", list(DECLARING))
def test_bomb_in_every_format_is_refused_from_its_header(
    fmt: str, size: tuple[int, int], no_pixel_decoding: None, no_opencv_decoding: None
) -> None:
    if fmt == "png" and size == OVER_PILLOW_2X:
        size = (20000, 20000)  # already cheap to build as a real PNG
    with pytest.raises(DecompressionBomb):
        decode(DECLARING[fmt](*size), SETTINGS)


@pytest.mark.parametrize("fmt", ["webp-vp8x", "webp-vp8l"])
def test_webp_bomb_is_refused_before_pillow_opens_it(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # libwebp's animation decoder allocates its canvas (8 bytes a pixel) as soon as Pillow
    # opens the file, and Pillow's own check before that only refuses above 2x its limit.
    def forbidden(*_args: object, **_kwargs: object) -> None:
        raise Forbidden("Pillow was handed a WebP bomb")

    monkeypatch.setattr(Image, "open", forbidden)
    with pytest.raises(DecompressionBomb, match=r"12000x8000 = 96000000 pixels"):
        decode(DECLARING[fmt](*PILLOW_1X_2X), SETTINGS)


def test_webp_header_check_lets_a_webp_within_the_limit_through() -> None:
    a = noise(30, 40, seed=3)
    for params in ({"lossless": True}, {"quality": 90}):
        data = encode(Image.fromarray(a), "WEBP", **params)
        assert decode(data, SETTINGS.replace(max_pixels=1200)).rgb.shape == (30, 40, 3)
        with pytest.raises(DecompressionBomb, match="1200 pixels"):
            decode(data, SETTINGS.replace(max_pixels=1199))


LIMIT = 10_000  # a small max_pixels, so images at and around it stay cheap
SIZES = [
    ((100, 100), True),  # exactly the limit
    ((101, 99), True),  # 9999
    ((101, 100), False),  # 10100: just over
    ((141, 141), False),  # 19881: under 2x the limit
    ((200, 100), False),  # exactly 2x
]


@pytest.mark.parametrize(("size", "accepted"), SIZES, ids=[f"{w}x{h}" for (w, h), _ in SIZES])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"])
def test_pixel_limit_in_every_format(fmt: str, size: tuple[int, int], accepted: bool) -> None:
    w, h = size
    data = encode(Image.fromarray(textured(7, (w, h))), fmt)
    settings = SETTINGS.replace(max_pixels=LIMIT)
    if accepted:
        loaded = decode(data, settings)
        assert loaded.rgb.shape == (h, w, 3) and loaded.format == fmt
    else:
        with pytest.raises(DecompressionBomb, match=rf"{w}x{h} = {w * h} pixels, over the limit of {LIMIT}"):
            decode(data, settings)


# --------------------------------------------------------------------------- animation


def _frames(n: int, h: int = 24, w: int = 32) -> list[np.ndarray]:
    return [noise(h, w, seed=100 + k) for k in range(n)]


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_animated_png_and_webp_use_their_first_frame(fmt: str) -> None:
    frames = _frames(4)
    ims = [Image.fromarray(f) for f in frames]
    params: dict[str, object] = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(ims[0], fmt, save_all=True, append_images=ims[1:], duration=80, **params)
    with Image.open(io.BytesIO(data)) as im:
        assert im.n_frames == 4 and im.is_animated
    loaded = decode(data, SETTINGS)
    assert loaded.animated is True and loaded.format == fmt
    np.testing.assert_array_equal(loaded.rgb, frames[0])


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_many_frames_each_at_the_pixel_limit_cost_one_frame(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 60 frames of 64x64 = 60x the pixel limit in all: the loader decodes the first frame
    # and no other, so its cost is that of one frame (plus one pass over the bytes) whatever
    # the frame count, and an animation needs no frames-times-pixels cap of its own.
    side = 64
    ims = [Image.fromarray(textured(k, (side, side))) for k in range(60)]
    params: dict[str, object] = {"lossless": True, "method": 0} if fmt == "WEBP" else {}
    data = encode(ims[0], fmt, save_all=True, append_images=ims[1:], duration=40, **params)
    with Image.open(io.BytesIO(data)) as im:
        assert im.n_frames == 60
    decoders: list[str] = []
    real = Image._getdecoder

    def counting(mode: str, decoder_name: str, *args: object, **kwargs: object) -> object:
        decoders.append(decoder_name)
        return real(mode, decoder_name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Image, "_getdecoder", counting)
    loaded = decode(data, SETTINGS.replace(max_pixels=side * side))
    assert loaded.animated is True and loaded.rgb.shape == (side, side, 3)
    assert len(decoders) == 1, decoders


def test_frames_after_the_first_are_never_decoded() -> None:
    # An animated GIF cut off inside its last frame's pixel data still gives its first frame:
    # nothing after the first frame's data is decoded.
    frames = _frames(3)
    ims = [Image.fromarray(f).convert("P", palette=Image.Palette.ADAPTIVE) for f in frames]
    data = encode(ims[0], "GIF", save_all=True, append_images=ims[1:], duration=80)
    cut = data[: len(data) - 200]
    with Image.open(io.BytesIO(cut)) as im, pytest.raises(OSError):
        im.seek(2)
        im.load()
    loaded = decode(cut, SETTINGS)
    assert loaded.animated is True
    np.testing.assert_array_equal(loaded.rgb, decode(encode(ims[0], "GIF"), SETTINGS).rgb)


def test_gif_cut_off_after_its_first_frame_is_corrupt_not_a_crash(tmp_path: Path) -> None:
    # Found by fuzz/fuzz_loader.py: Pillow raised IndexError while looking for a second frame,
    # and it escaped the loader, so prepare_batch (and the whole scan) stopped on it.
    frames = _frames(2)
    ims = [Image.fromarray(f).convert("P", palette=Image.Palette.ADAPTIVE) for f in frames]
    data = encode(ims[0], "GIF", save_all=True, append_images=ims[1:], duration=80)
    second = data.index(b"\x2c", data.index(b"\x21\xf9", data.index(b"\x21\xf9") + 1))
    cut = data[: second + 10]  # the second frame's descriptor, then nothing
    with pytest.raises(CorruptImage):
        decode(cut, SETTINGS)
    bad, good = tmp_path / "cut.gif", tmp_path / "good.png"
    bad.write_bytes(cut)
    Image.fromarray(textured(2)).save(good)
    out = prepare_batch([str(bad), str(good)], SETTINGS)
    assert out[0].error is not None and out[0].error.startswith("CorruptImage: ")
    assert out[1].ok


# --------------------------------------------------------------------------- modes


def test_la_png_with_alpha_is_composited_on_white() -> None:
    grey = np.random.default_rng(5).integers(0, 256, (16, 20), dtype=np.uint8)
    alpha = np.where(np.arange(20)[None, :] < 10, 255, 0).astype(np.uint8).repeat(16, axis=0)
    data = encode(Image.merge("LA", [Image.fromarray(grey), Image.fromarray(alpha)]), "PNG")
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "LA"
    out = decode(data, SETTINGS).rgb
    np.testing.assert_array_equal(out[:, :10], np.repeat(grey[:, :10, None], 3, axis=2))
    np.testing.assert_array_equal(out[:, 10:], np.broadcast_to(WHITE, (16, 10, 3)))


def test_gif_transparency_is_composited_on_white() -> None:
    index = np.random.default_rng(6).integers(0, 4, (16, 16), dtype=np.uint8)
    im = Image.fromarray(index, mode="P")
    palette = np.array([[200, 10, 10], [10, 200, 10], [10, 10, 200], [0, 0, 0]], np.uint8)
    im.putpalette(palette.tobytes())
    data = encode(im, "GIF", transparency=3)
    out = decode(data, SETTINGS).rgb
    np.testing.assert_array_equal(out, np.where((index == 3)[..., None], WHITE, palette[index]))


def test_webp_alpha_is_composited_on_white() -> None:
    rgb = noise(16, 16, seed=7)
    alpha = np.where(np.arange(16)[:, None] < 8, 255, 0).astype(np.uint8).repeat(16, axis=1)
    data = encode(Image.fromarray(np.dstack([rgb, alpha])), "WEBP", lossless=True, exact=True)
    out = decode(data, SETTINGS).rgb
    np.testing.assert_array_equal(out[:8], rgb[:8])
    np.testing.assert_array_equal(out[8:], np.broadcast_to(WHITE, (8, 16, 3)))


def _tiff_16bit(values: np.ndarray, byte_order: str) -> bytes:
    """An uncompressed 16-bit greyscale TIFF written by hand, in either byte order."""
    h, w = values.shape
    e = "<" if byte_order == "II" else ">"
    pixels = values.astype(e + "u2").tobytes()
    entries = [(256, 3, w), (257, 3, h), (258, 3, 16), (259, 3, 1), (262, 3, 1), (273, 4, 0), (277, 3, 1)]
    entries += [(278, 3, h), (279, 4, len(pixels))]
    ifd_size = 2 + 12 * len(entries) + 4
    data_offset = 8 + ifd_size
    out = bytearray((b"II*\x00" if byte_order == "II" else b"MM\x00*") + struct.pack(e + "I", 8))
    out += struct.pack(e + "H", len(entries))
    for tag, typ, value in entries:
        value = data_offset if tag == 273 else value
        packed = struct.pack(e + "H", value) + b"\0\0" if typ == 3 else struct.pack(e + "I", value)
        out += struct.pack(e + "HHI", tag, typ, 1) + packed
    out += b"\0\0\0\0" + pixels
    return bytes(out)


@pytest.mark.parametrize(("byte_order", "mode"), [("II", "I;16"), ("MM", "I;16B")])
def test_sixteen_bit_tiff_in_both_byte_orders(byte_order: str, mode: str) -> None:
    v = np.random.default_rng(8).integers(0, 256, (12, 16)).astype(np.uint16)
    data = _tiff_16bit(v * 257, byte_order)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == mode
    out = decode(data, SETTINGS).rgb
    np.testing.assert_array_equal(out, np.repeat(v.astype(np.uint8)[..., None], 3, axis=2))


def _tiff_grey_premultiplied_alpha(grey: np.ndarray, alpha: np.ndarray) -> bytes:
    """An uncompressed TIFF of grey with associated (premultiplied) alpha, written by hand:
    Pillow opens it in mode "La", which it can convert to "LA" only."""
    h, w = grey.shape
    pre = (grey.astype(np.uint32) * alpha // 255).astype(np.uint8)
    pixels = np.dstack([pre, alpha]).tobytes()
    entries = [(256, 3, 1, w), (257, 3, 1, h), (259, 3, 1, 1), (262, 3, 1, 1), (273, 4, 1, 0)]
    entries += [(277, 3, 1, 2), (278, 3, 1, h), (279, 4, 1, len(pixels)), (338, 3, 1, 1)]
    entries.insert(2, (258, 3, 2, 8 | 8 << 16))  # BitsPerSample 8, 8: two shorts, inline
    data_offset = 8 + 2 + 12 * len(entries) + 4
    out = bytearray(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries)))
    for tag, typ, count, value in entries:
        value = data_offset if tag == 273 else value
        inline = struct.pack("<HH", value, 0) if typ == 3 and count == 1 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, typ, count) + inline
    return bytes(out + b"\0\0\0\0" + pixels)


def test_tiff_grey_with_premultiplied_alpha_loads() -> None:
    # Found by tests/test_loader_properties.py: mode "La" reached a conversion Pillow does not
    # have, so such TIFFs were refused as corrupt.
    grey = np.random.default_rng(4).integers(0, 256, (10, 12), dtype=np.uint8)
    alpha = np.where(np.arange(12) < 6, 255, 0).astype(np.uint8)[None].repeat(10, axis=0)
    data = _tiff_grey_premultiplied_alpha(grey, alpha)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "La"
    out = decode(data, SETTINGS).rgb
    np.testing.assert_array_equal(out[:, :6], np.repeat(grey[:, :6, None], 3, axis=2))
    np.testing.assert_array_equal(out[:, 6:], np.broadcast_to(WHITE, (10, 6, 3)))


def test_cmyk_jpeg_loads_as_rgb() -> None:
    a = textured(9, (48, 32))
    data = encode(Image.fromarray(a).convert("CMYK"), "JPEG", quality=95)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "CMYK"
    out = decode(data, SETTINGS).rgb
    assert out.shape == (32, 48, 3)
    assert np.abs(out.astype(int) - a.astype(int)).mean() < 4


# --------------------------------------------------------------------------- EXIF orientation

# What a viewer does to the stored pixels for each orientation value (EXIF 2.3, tag 0x0112).
DISPLAY: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # turned 180 degrees
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # mirrored along the main diagonal
    6: lambda a: np.rot90(a, k=-1),  # turned 90 degrees clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # mirrored along the other diagonal
    8: lambda a: np.rot90(a, k=1),  # turned 90 degrees anticlockwise
}
# The stored pixels that display as ``picture`` under each orientation.
STORE: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, k=1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, k=-1),
}


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def test_display_and_store_undo_each_other() -> None:
    # guards the tables above
    a = noise(3, 5, seed=9)
    for o in range(1, 9):
        np.testing.assert_array_equal(DISPLAY[o](STORE[o](a)), a)
    assert len({DISPLAY[o](a).tobytes() + bytes(DISPLAY[o](a).shape) for o in DISPLAY}) == 8


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_shows_the_same_picture(orientation: int) -> None:
    # One picture, stored as each orientation needs it (lossless PNG): the loader gives that
    # picture back every time, pixel for pixel.
    picture = noise(20, 36, seed=10)
    stored = np.ascontiguousarray(STORE[orientation](picture))
    data = encode(Image.fromarray(stored), "PNG", exif=_exif(orientation))
    loaded = decode(data, SETTINGS)
    assert (loaded.width, loaded.height) == (36, 20)
    np.testing.assert_array_equal(loaded.rgb, picture)


@pytest.mark.parametrize("orientation", range(2, 9))
def test_jpeg_orientation_equals_orientation_1_turned_by_hand(orientation: int) -> None:
    # The same stored JPEG pixels with orientation 1 and with ``orientation``: the loader's
    # picture is the orientation-1 picture turned the way EXIF says.
    a = textured(11, (40, 24))
    upright = decode(encode(Image.fromarray(a), "JPEG", quality=90, exif=_exif(1)), SETTINGS).rgb
    turned = decode(encode(Image.fromarray(a), "JPEG", quality=90, exif=_exif(orientation)), SETTINGS).rgb
    np.testing.assert_array_equal(turned, DISPLAY[orientation](upright))


def _raw_exif(entries: list[tuple[int, int, int, bytes]]) -> bytes:
    """An EXIF block written by hand: (tag, type, count, payload) entries in one IFD."""
    head = b"II*\x00" + struct.pack("<I", 8)
    extra_at = 8 + 2 + 12 * len(entries) + 4
    ifd, extra = struct.pack("<H", len(entries)), b""
    for tag, typ, count, payload in entries:
        if len(payload) <= 4:
            ifd += struct.pack("<HHI", tag, typ, count) + payload.ljust(4, b"\0")
        else:
            ifd += struct.pack("<HHII", tag, typ, count, extra_at + len(extra))
            extra += payload
    return b"Exif\x00\x00" + head + ifd + b"\0\0\0\0" + extra


@pytest.mark.parametrize(
    "exif",
    [
        pytest.param(_raw_exif([(0x0112, 3, 1, struct.pack("<H", v))]), id=f"orientation-{v}")
        for v in (0, 9, 255, 65535)
    ]
    + [
        pytest.param(_raw_exif([(0x0112, 2, 9, b"<script>\0")]), id="orientation-as-text"),
        pytest.param(b"Exif\x00\x00not a tiff header at all", id="garbage"),
        pytest.param(b"Exif\x00\x00II*\x00\xff\xff\xff\x7f", id="ifd-offset-past-end"),
        pytest.param(b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff", id="entry-count-past-end"),
    ],
)
def test_bad_exif_is_ignored_and_the_image_loads_as_stored(exif: bytes) -> None:
    a = textured(12, (40, 24))
    data = encode(Image.fromarray(a), "JPEG", quality=90, exif=exif)
    loaded = decode(data, SETTINGS)
    assert loaded.rgb.shape == (24, 40, 3)  # not turned


SCRIPT = "<script>alert(document.cookie)</script>"


def _jpeg_with_script_exif(a: np.ndarray) -> bytes:
    texts = [(0x010E, SCRIPT), (0x013B, SCRIPT), (0x8298, f'"><img src=x onerror=alert(1)> {SCRIPT}')]
    entries = [(tag, 2, len(t.encode()) + 1, t.encode() + b"\0") for tag, t in texts]
    user_comment = b"UNICODE\0" + SCRIPT.encode("utf-16-le")
    entries.append((0x9286, 7, len(user_comment), user_comment))
    entries.append((0x010F, 2, 6, b"\xff\xfe\x00<s>"))  # not text at all
    return encode(Image.fromarray(a), "JPEG", quality=90, exif=_raw_exif(entries))


def test_script_in_exif_text_crashes_nothing(tmp_path: Path) -> None:
    a = textured(13)
    data = _jpeg_with_script_exif(a)
    with Image.open(io.BytesIO(data)) as im:
        assert im.getexif()[0x010E] == SCRIPT  # the payload is really there
    assert decode(data, SETTINGS).rgb.shape == (120, 160, 3)
    path = tmp_path / "catalog" / "scripted.jpg"
    path.parent.mkdir()
    path.write_bytes(data)
    (item,) = prepare_batch([str(path)], SETTINGS, catalog=True)
    assert item.ok, item.error
    db = str(tmp_path / "x.db")
    runner = CliRunner()
    added = runner.invoke(cli, ["--db", db, "catalog", "add", str(path.parent)], catch_exceptions=False)
    assert added.exit_code == 0 and "added 1" in added.output
    checked = runner.invoke(
        cli, ["--db", db, "check", str(path), "--format", "jsonl"], catch_exceptions=False
    )
    assert checked.exit_code == 0, checked.output  # a copy of itself
    assert "<script>" not in checked.stdout  # EXIF text never reaches the output


# --------------------------------------------------------------------------- zero-sized images


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_0x0() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b""))
        + _png_chunk(b"IEND", b"")
    )


ZERO_SIZED = {
    "png": png_0x0,
    "gif": lambda: gif_declaring(0, 0),
    "bmp": lambda: bmp_declaring(0, 0),
    "tiff": lambda: tiff_declaring(0, 0),
    "jpeg": lambda: jpeg_declaring(0, 0),
    "gif-0-wide": lambda: gif_declaring(0, 100),
    "tiff-0-high": lambda: tiff_declaring(100, 0),
}


@pytest.mark.parametrize("make", list(ZERO_SIZED.values()), ids=list(ZERO_SIZED))
def test_zero_sized_image_is_a_clean_per_item_error(make: Callable[[], bytes], tmp_path: Path) -> None:
    data = make()
    with pytest.raises(ImageError) as caught:
        decode(data, SETTINGS)
    assert type(caught.value) in (UnhashableImage, CorruptImage, UnsupportedFormat)
    path = tmp_path / "zero.img"
    path.write_bytes(data)
    (item,) = prepare_batch([str(path)], SETTINGS)
    assert item.error is not None and item.error.split(":")[0] == type(caught.value).__name__


# --------------------------------------------------------------------------- paths that change


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_paths_that_change_between_listing_and_reading(tmp_path: Path) -> None:
    folder = tmp_path / "crawl"
    folder.mkdir()
    for k, name in enumerate(["a.png", "b.png", "c.png", "d.png", "e.png", "f.png"]):
        Image.fromarray(textured(20 + k, (40, 30))).save(folder / name)
    listed = expand_sources([folder])
    assert [Path(p).name for p in listed] == ["a.png", "b.png", "c.png", "d.png", "e.png", "f.png"]
    (folder / "b.png").unlink()  # vanished
    (folder / "c.png").unlink()
    (folder / "c.png").mkdir()  # became a folder
    (folder / "d.png").unlink()
    os.mkfifo(folder / "d.png")  # became a FIFO (no writer: opening it for reading would block)
    (folder / "e.png").write_bytes(b"")  # emptied
    out = prepare_batch(listed, SETTINGS)
    assert [p.path for p in out] == listed
    errors = [p.error.split(":")[0] if p.error else None for p in out]
    assert errors == [None, "UnreadablePath", "UnreadablePath", "UnreadablePath", "UnsupportedFormat", None]
    assert out[0].ok and out[5].ok
    assert "No such file" in (out[1].error or "")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_path_swapped_for_a_fifo_after_the_check_does_not_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race an unattended run can meet: the path is a regular file when it is checked and
    # a FIFO by the time it is opened. Opening a FIFO for reading waits for a writer forever.
    path = tmp_path / "swapped.png"
    Image.fromarray(textured(30, (40, 30))).save(path)
    target = os.fspath(path)
    real_os_open, real_open = os.open, open
    swapped: list[bool] = []

    def swap() -> None:
        if not swapped:
            swapped.append(True)
            path.unlink()
            os.mkfifo(path)

    def os_open(p: object, *args: object, **kwargs: object) -> int:
        if os.fspath(p) == target:  # type: ignore[arg-type]
            swap()
        return real_os_open(p, *args, **kwargs)  # type: ignore[arg-type]

    def builtin_open(p: object, *args: object, **kwargs: object) -> object:
        if isinstance(p, str | os.PathLike) and os.fspath(p) == target:
            swap()
        return real_open(p, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr("builtins.open", builtin_open)
    monkeypatch.setattr(io, "open", builtin_open)
    outcome: list[BaseException | bytes] = []

    def read() -> None:
        try:
            outcome.append(read_bytes(path, SETTINGS))
        except BaseException as e:
            outcome.append(e)

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(timeout=10)
    if worker.is_alive():  # unblock the reader before failing, so no thread is left hanging
        fd = real_os_open(path, os.O_WRONLY)
        os.close(fd)
        worker.join(timeout=5)
    assert swapped, "the file was never opened"
    assert stat.S_ISFIFO(path.stat().st_mode)
    assert len(outcome) == 1 and isinstance(outcome[0], UnreadablePath), outcome
    assert "not a regular file" in str(outcome[0])


def test_unlistable_folder_is_reported_not_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A folder the walk cannot list (permissions; root could read a mode-000 folder, so the
    # refusal is simulated) becomes an item of its own that fails, in its sorted place.
    root = tmp_path / "crawl"
    for name in ["a/1.png", "b/2.png", "c/3.png"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(textured(40, (40, 30))).save(root / name)
    locked = os.fspath(root / "b")
    real_scandir = os.scandir

    def scandir(p: object = ".") -> object:
        if os.fspath(p) == locked:  # type: ignore[arg-type]
            raise PermissionError(13, "Permission denied", locked)
        return real_scandir(p)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", scandir)
    listed = expand_sources([root])
    assert listed == [os.fspath(root / "a/1.png"), locked, os.fspath(root / "c/3.png")]
    out = prepare_batch(listed, SETTINGS)
    assert out[0].ok and out[2].ok
    assert out[1].error is not None and out[1].error.startswith("UnreadablePath: ")


def test_unlistable_root_folder_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "crawl"
    root.mkdir()
    real_scandir = os.scandir

    def scandir(p: object = ".") -> object:
        if os.fspath(p) == os.fspath(root):  # type: ignore[arg-type]
            raise PermissionError(13, "Permission denied", os.fspath(root))
        return real_scandir(p)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", scandir)
    assert expand_sources([root]) == [os.fspath(root)]


def test_decoding_in_several_threads_leaves_the_warning_filters_as_they_were():
    """Stage 3's threads decode catalog images while the main thread decodes others; Pillow's
    warnings are silenced while an image decodes, and the process's warning filters must be
    the same afterwards (``warnings.catch_warnings`` alone restores whatever the thread that
    leaves last saw, possibly another thread's silenced filters)."""
    import sys
    import warnings

    rng = np.random.default_rng(3)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (600, 800, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    settings = Settings()
    before = list(warnings.filters)
    start = threading.Barrier(6)
    errors: list[BaseException] = []

    def work() -> None:
        start.wait()
        try:
            for _ in range(25):
                decode(data, settings)
        except BaseException as e:  # reported below
            errors.append(e)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        threads = [threading.Thread(target=work) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
        after = list(warnings.filters)
        warnings.filters[:] = before  # never leave the rest of the suite silenced
    assert errors == []
    assert after == before

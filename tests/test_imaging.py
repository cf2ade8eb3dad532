"""The safe loader (``detector.intake.loader``) and the error handling of ``prepare_batch``.

Every image is generated here from seeded numpy arrays with Pillow, in memory or under
``tmp_path``; nothing is fetched.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from detector.config import Settings
from detector.errors import (
    CorruptImage,
    DecompressionBomb,
    ImageError,
    UnhashableImage,
    UnreadablePath,
    UnsupportedFormat,
)
from detector.intake.loader import BACKGROUND_RGB, LoadedImage, decode, load_image, read_bytes, to_rgb
from detector.intake.prepare import prepare_batch

SETTINGS = Settings()


# --------------------------------------------------------------------------- helpers


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def noise_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def png_bytes(a: np.ndarray) -> bytes:
    return encode(Image.fromarray(a), "PNG")


def jpeg_bytes(a: np.ndarray, **params: object) -> bytes:
    return encode(Image.fromarray(a), "JPEG", quality=95, **params)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def black_bilevel_png(width: int, height: int) -> bytes:
    """A complete, valid 1-bit greyscale PNG of the given size, all black: huge declared
    pixel counts in a few kilobytes (the data is zeros, compressed row by row)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def fits_bytes() -> bytes:
    cards = [
        "SIMPLE  =                    T",
        "BITPIX  =                    8",
        "NAXIS   =                    2",
        "NAXIS1  =                   16",
        "NAXIS2  =                   16",
        "END",
    ]
    header = "".join(c.ljust(80) for c in cards).ljust(2880).encode("ascii")
    data = rng(7).integers(0, 256, 16 * 16, dtype=np.uint8).tobytes().ljust(2880, b"\x00")
    return header + data


HAND_EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n"
    b"%%BoundingBox: 0 0 16 16\n"
    b"%%EndComments\n"
    b"0 0 moveto 16 16 lineto stroke\n"
    b"showpage\n"
    b"%%EOF\n"
)

SVG = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
    b'<rect x="0" y="0" width="32" height="64" fill="red"/></svg>\n'
)


class PixelsDecoded(BaseException):
    """Raised by the patched decoder; a BaseException, so the loader's net for Pillow's own
    failures (``except Exception``) cannot turn it into a CorruptImage."""


@pytest.fixture
def no_pixel_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt to decode pixel data fail loudly."""

    def forbidden(self: ImageFile.ImageFile) -> None:
        raise PixelsDecoded("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", forbidden)


# --------------------------------------------------------------------------- bombs and sizes


def test_crafted_png_is_a_real_png_of_the_declared_size() -> None:
    # guards the helper: Pillow parses its header and decodes its pixels.
    data = black_bilevel_png(40, 30)
    with Image.open(io.BytesIO(data)) as im:
        assert (im.format, im.mode, im.size) == ("PNG", "1", (40, 30))
        assert np.asarray(im.convert("L")).max() == 0


def test_no_pixel_decoding_fixture_does_block_decoding(no_pixel_decoding: None) -> None:
    # guards the fixture the bomb tests rely on: a normal PNG can no longer be decoded.
    with pytest.raises(PixelsDecoded, match="pixel data was decoded"):
        decode(png_bytes(noise_rgb(16, 16)), SETTINGS)


def test_20000_square_png_is_a_bomb_before_decoding(no_pixel_decoding: None) -> None:
    data = black_bilevel_png(20000, 20000)
    assert len(data) < 1_000_000  # a tiny file declaring 400 million pixels
    with pytest.raises(DecompressionBomb):
        decode(data, SETTINGS)


def test_pixel_count_over_default_limit_is_caught_by_our_header_check(no_pixel_decoding: None) -> None:
    # 9000x9000 = 81M pixels: over max_pixels (64M) but under Pillow's own bomb threshold,
    # so it is the loader's header check that refuses it.
    data = black_bilevel_png(9000, 9000)
    assert 9000 * 9000 > SETTINGS.max_pixels
    with pytest.raises(DecompressionBomb, match=r"9000x9000 = 81000000 pixels"):
        decode(data, SETTINGS)


def test_bomb_file_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(black_bilevel_png(20000, 20000))
    with pytest.raises(DecompressionBomb):
        load_image(path, SETTINGS)


def test_pixel_limit_boundary() -> None:
    a = noise_rgb(30, 40, seed=1)
    data = png_bytes(a)
    with pytest.raises(DecompressionBomb, match="1200 pixels"):
        decode(data, SETTINGS.replace(max_pixels=40 * 30 - 1))
    loaded = decode(data, SETTINGS.replace(max_pixels=40 * 30))
    assert loaded.rgb.shape == (30, 40, 3)
    np.testing.assert_array_equal(loaded.rgb, a)


def test_file_size_limit_on_disk(tmp_path: Path) -> None:
    data = png_bytes(noise_rgb(32, 32, seed=2))
    path = tmp_path / "a.png"
    path.write_bytes(data)
    n = len(data)
    with pytest.raises(DecompressionBomb, match=str(n)):
        read_bytes(path, SETTINGS.replace(max_file_bytes=n - 1))
    with pytest.raises(DecompressionBomb):
        load_image(path, SETTINGS.replace(max_file_bytes=n - 1))
    assert read_bytes(path, SETTINGS.replace(max_file_bytes=n)) == data
    assert load_image(path, SETTINGS.replace(max_file_bytes=n)).rgb.shape == (32, 32, 3)


def test_file_size_limit_on_bytes() -> None:
    data = png_bytes(noise_rgb(32, 32, seed=2))
    with pytest.raises(DecompressionBomb):
        decode(data, SETTINGS.replace(max_file_bytes=len(data) - 1))
    assert decode(data, SETTINGS.replace(max_file_bytes=len(data))).rgb.shape == (32, 32, 3)


# --------------------------------------------------------------------------- corrupt and unknown bytes


def test_truncated_jpeg_is_corrupt() -> None:
    data = jpeg_bytes(noise_rgb(64, 80, seed=3))
    assert decode(data, SETTINGS).rgb.shape == (64, 80, 3)  # the whole file is fine
    with pytest.raises(CorruptImage):
        decode(data[: len(data) // 2], SETTINGS)


def test_truncated_jpeg_file_is_corrupt(tmp_path: Path) -> None:
    data = jpeg_bytes(noise_rgb(64, 80, seed=3))
    path = tmp_path / "half.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptImage):
        load_image(path, SETTINGS)


def test_random_bytes_are_unsupported() -> None:
    data = rng(4).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(UnsupportedFormat):
        decode(data, SETTINGS)


def test_empty_bytes_are_unsupported(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedFormat):
        decode(b"", SETTINGS)
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(UnsupportedFormat):
        load_image(path, SETTINGS)


def _pillow_eps() -> bytes:
    return encode(Image.fromarray(noise_rgb(16, 16, seed=5)), "EPS")


def _pillow_pdf() -> bytes:
    return encode(Image.fromarray(noise_rgb(16, 16, seed=6)), "PDF")


@pytest.mark.parametrize(
    ("make", "magic"),
    [
        pytest.param(_pillow_eps, b"%!PS-Adobe", id="eps-pillow"),
        pytest.param(lambda: HAND_EPS, b"%!PS-Adobe-3.0 EPSF-3.0", id="eps-hand"),
        pytest.param(_pillow_pdf, b"%PDF-", id="pdf"),
        pytest.param(fits_bytes, b"SIMPLE  =                    T", id="fits"),
        pytest.param(lambda: SVG, b"<?xml", id="svg"),
    ],
)
def test_disallowed_format_under_jpg_name_is_unsupported(tmp_path: Path, make, magic: bytes) -> None:
    data = make()
    assert data.startswith(magic)
    path = tmp_path / "x.jpg"
    path.write_bytes(data)
    with pytest.raises(UnsupportedFormat):
        load_image(path, SETTINGS)
    with pytest.raises(UnsupportedFormat):
        decode(data, SETTINGS)


def test_fits_bytes_are_a_format_pillow_knows_but_the_loader_refuses() -> None:
    # Without the allow-list Pillow would parse this header as FITS.
    with Image.open(io.BytesIO(fits_bytes())) as im:
        assert im.format == "FITS"
        assert im.size == (16, 16)
    with pytest.raises(UnsupportedFormat):
        decode(fits_bytes(), SETTINGS)


# --------------------------------------------------------------------------- animation


def _checker(h: int, w: int, c0: tuple[int, int, int], c1: tuple[int, int, int]) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((yy // 4 + xx // 4) % 2).astype(bool)
    return np.where(mask[..., None], np.array(c1, np.uint8), np.array(c0, np.uint8)).astype(np.uint8)


def test_animated_gif_uses_first_frame() -> None:
    frames = [
        _checker(24, 32, (255, 0, 0), (0, 0, 255)),
        _checker(24, 32, (0, 255, 0), (255, 255, 0)),
        _checker(24, 32, (0, 0, 0), (255, 0, 255)),
    ]
    ims = [Image.fromarray(f) for f in frames]
    data = encode(ims[0], "GIF", save_all=True, append_images=ims[1:], duration=100, loop=0)
    with Image.open(io.BytesIO(data)) as im:
        assert im.n_frames == 3
    loaded = decode(data, SETTINGS)
    assert loaded.format == "GIF"
    assert loaded.animated is True
    np.testing.assert_array_equal(loaded.rgb, frames[0])


def test_still_image_is_not_animated() -> None:
    data = encode(Image.fromarray(_checker(24, 32, (255, 0, 0), (0, 0, 255))), "GIF")
    loaded = decode(data, SETTINGS)
    assert loaded.animated is False
    assert loaded.format == "GIF"


# --------------------------------------------------------------------------- Pillow modes


H, W = 12, 16
GREY = rng(10).integers(0, 256, (H, W), dtype=np.uint8)
COLOUR = noise_rgb(H, W, seed=11)
INDEX = rng(12).integers(0, 8, (H, W), dtype=np.uint8)
PALETTE = rng(13).integers(0, 256, (8, 3), dtype=np.uint8)
ALPHA_MASK = np.where(INDEX % 2 == 0, 255, 0).astype(np.uint8)  # opaque or fully transparent
WHITE = np.array(BACKGROUND_RGB, np.uint8)


def _grey3(g: np.ndarray) -> np.ndarray:
    return np.repeat(g[..., None], 3, axis=2)


def _palette_image() -> Image.Image:
    im = Image.fromarray(INDEX, mode="P")
    im.putpalette(PALETTE.tobytes())
    return im


def _mode_cases() -> list[tuple[str, Image.Image, np.ndarray]]:
    """(mode, image, expected RGB) for every mode the loader must handle."""
    bits = GREY > 127
    p_trns = _palette_image()
    p_trns.info["transparency"] = 3
    pa = _palette_image().convert("PA")
    pa.putalpha(Image.fromarray(ALPHA_MASK))
    la = Image.merge("LA", [Image.fromarray(GREY), Image.fromarray(ALPHA_MASK)])
    opaque = np.full((H, W), 255, np.uint8)
    cmyk = Image.merge(
        "CMYK", [Image.fromarray(255 - COLOUR[..., i]) for i in range(3)] + [Image.new("L", (W, H), 0)]
    )
    neutral = Image.new("L", (W, H), 128)
    ycbcr = Image.merge("YCbCr", [Image.fromarray(GREY), neutral, neutral])
    transparent_where_mask = ALPHA_MASK[..., None] == 0
    return [
        ("1", Image.fromarray(bits), _grey3(np.where(bits, 255, 0).astype(np.uint8))),
        ("L", Image.fromarray(GREY), _grey3(GREY)),
        ("LA", Image.merge("LA", [Image.fromarray(GREY), Image.fromarray(opaque)]), _grey3(GREY)),
        ("LA", la, np.where(transparent_where_mask, WHITE, _grey3(GREY))),
        ("P", _palette_image(), PALETTE[INDEX]),
        ("P", p_trns, np.where((INDEX == 3)[..., None], WHITE, PALETTE[INDEX])),
        ("PA", pa, np.where(transparent_where_mask, WHITE, PALETTE[INDEX])),
        ("RGBA", Image.fromarray(np.dstack([COLOUR, opaque])), COLOUR),
        ("CMYK", cmyk, COLOUR),
        ("YCbCr", ycbcr, _grey3(GREY)),
        ("I", Image.fromarray(GREY.astype(np.int32)), _grey3(GREY)),
        ("I;16", Image.fromarray(GREY.astype(np.uint16) * 257), _grey3(GREY)),
        ("F", Image.fromarray(GREY.astype(np.float32) / 255), _grey3(GREY)),
    ]


MODE_CASES = _mode_cases()
MODE_IDS = [
    "1",
    "L",
    "LA-opaque",
    "LA-alpha",
    "P",
    "P-transparency",
    "PA",
    "RGBA",
    "CMYK",
    "YCbCr",
    "I",
    "I;16",
    "F",
]


@pytest.mark.parametrize(("mode", "im", "expected"), MODE_CASES, ids=MODE_IDS)
def test_to_rgb_every_mode(mode: str, im: Image.Image, expected: np.ndarray) -> None:
    assert im.mode == mode
    out = to_rgb(im)
    assert out.shape == (H, W, 3)
    assert out.dtype == np.uint8
    assert out.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize(
    ("mode", "im", "expected"),
    [c for c, i in zip(MODE_CASES, MODE_IDS, strict=True) if i != "P-transparency"],
    ids=[i for i in MODE_IDS if i != "P-transparency"],
)
def test_decode_every_mode_from_tiff(mode: str, im: Image.Image, expected: np.ndarray) -> None:
    # TIFF stores all these modes losslessly, so the full loader must give the same pixels.
    data = encode(im, "TIFF")
    with Image.open(io.BytesIO(data)) as back:
        assert back.mode == mode
    loaded = decode(data, SETTINGS)
    assert loaded.format == "TIFF"
    assert loaded.rgb.shape == (H, W, 3)
    assert loaded.rgb.dtype == np.uint8
    np.testing.assert_array_equal(loaded.rgb, expected)


def test_palette_png_with_transparency_index() -> None:
    im = _palette_image()
    data = encode(im, "PNG", transparency=3)
    with Image.open(io.BytesIO(data)) as back:
        assert back.mode == "P" and back.info["transparency"] == 3
    loaded = decode(data, SETTINGS)
    np.testing.assert_array_equal(loaded.rgb, np.where((INDEX == 3)[..., None], WHITE, PALETTE[INDEX]))


def test_sixteen_bit_png_scales_by_257() -> None:
    v = rng(14).integers(0, 256, (20, 24), dtype=np.uint16)
    assert v.max() > 1  # so v*257 is beyond the 8-bit range
    data = png_bytes(v * 257)
    with Image.open(io.BytesIO(data)) as back:
        assert back.mode.startswith("I;16")
    loaded = decode(data, SETTINGS)
    np.testing.assert_array_equal(loaded.rgb, _grey3(v.astype(np.uint8)))


def test_float_in_unit_range_scales_to_255() -> None:
    f = rng(15).random((H, W)).astype(np.float32)
    f[0, 0], f[0, 1] = 0.0, 1.0
    out = to_rgb(Image.fromarray(f))
    expected = np.rint(f.astype(np.float64) * 255).astype(np.uint8)
    np.testing.assert_array_equal(out, _grey3(expected))
    assert out[0, 0, 0] == 0 and out[0, 1, 0] == 255


def test_signed_32_bit_uses_its_own_range() -> None:
    a = rng(16).integers(-1000, 1001, (H, W), dtype=np.int32)
    a[0, 0], a[0, 1] = -1000, 1000
    out = to_rgb(Image.fromarray(a))
    expected = np.rint((a.astype(np.float64) + 1000) * 255 / 2000).astype(np.uint8)
    np.testing.assert_array_equal(out, _grey3(expected))


# --------------------------------------------------------------------------- alpha


def test_fully_transparent_image_is_white_hence_unhashable() -> None:
    a = np.dstack([noise_rgb(32, 32, seed=17), np.zeros((32, 32), np.uint8)])
    im = Image.fromarray(a)
    assert im.mode == "RGBA"
    np.testing.assert_array_equal(to_rgb(im), np.broadcast_to(WHITE, (32, 32, 3)))
    with pytest.raises(UnhashableImage, match="flat"):
        decode(encode(im, "PNG"), SETTINGS)


def test_half_transparent_image_blends_with_white() -> None:
    rgb = noise_rgb(32, 32, seed=18)
    alpha = 128
    data = encode(Image.fromarray(np.dstack([rgb, np.full((32, 32), alpha, np.uint8)])), "PNG")
    loaded = decode(data, SETTINGS)
    expected = np.rint(rgb.astype(np.float64) * alpha / 255 + np.array(BACKGROUND_RGB) * (255 - alpha) / 255)
    np.testing.assert_array_equal(loaded.rgb, expected.astype(np.uint8))
    # e.g. black at half alpha becomes mid-grey, white stays white
    blend = to_rgb(Image.fromarray(np.array([[[0, 0, 0, 128], [255, 255, 255, 128]]], np.uint8)))
    np.testing.assert_array_equal(blend, [[[127, 127, 127], [255, 255, 255]]])


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_colour_key_transparency_is_composited_on_background(mode: str) -> None:
    a = noise_rgb(16, 16, seed=19) // 2 + 64  # no pixel equal to the key by chance
    key = (10, 20, 30)
    a[:8] = key
    im = Image.fromarray(a)
    if mode == "L":
        im = im.convert("L")
        key_value: int | tuple[int, int, int] = int(np.asarray(im)[0, 0])
    else:
        key_value = key
    data = encode(im, "PNG", transparency=key_value)
    with Image.open(io.BytesIO(data)) as back:
        assert back.mode == mode and back.info["transparency"] == key_value
    loaded = decode(data, SETTINGS)
    np.testing.assert_array_equal(loaded.rgb[:8], np.broadcast_to(WHITE, (8, 16, 3)))


# --------------------------------------------------------------------------- EXIF orientation


def _jpeg_with_orientation(a: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg_bytes(a, exif=exif)


def _stored_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def test_exif_orientation_6_rotates() -> None:
    a = noise_rgb(24, 40, seed=20)
    data = _jpeg_with_orientation(a, 6)
    with Image.open(io.BytesIO(data)) as im:
        assert im.getexif()[0x0112] == 6
    stored = _stored_pixels(data)
    assert stored.shape == (24, 40, 3)
    loaded = decode(data, SETTINGS)
    assert (loaded.width, loaded.height) == (24, 40)
    assert loaded.rgb.shape == (40, 24, 3)
    # orientation 6: the stored image must be turned 90 degrees clockwise to display
    np.testing.assert_array_equal(loaded.rgb, np.rot90(stored, k=-1))


def test_exif_orientation_1_unchanged() -> None:
    a = noise_rgb(24, 40, seed=20)
    data = _jpeg_with_orientation(a, 1)
    loaded = decode(data, SETTINGS)
    assert (loaded.width, loaded.height) == (40, 24)
    np.testing.assert_array_equal(loaded.rgb, _stored_pixels(data))


# --------------------------------------------------------------------------- small and flat


@pytest.mark.parametrize(("h", "w"), [(100, 4), (4, 100), (1, 1)])
def test_tiny_images_are_unhashable(h: int, w: int) -> None:
    data = png_bytes(noise_rgb(h, w, seed=21))
    with pytest.raises(UnhashableImage, match="smaller than 5 px"):
        decode(data, SETTINGS)


def test_flat_image_is_unhashable() -> None:
    with pytest.raises(UnhashableImage, match="flat"):
        decode(png_bytes(np.full((64, 64, 3), 128, np.uint8)), SETTINGS)


def test_nearly_flat_image_is_unhashable() -> None:
    a = (128 + rng(22).integers(-1, 2, (64, 64, 1))).astype(np.uint8).repeat(3, axis=2)
    with pytest.raises(UnhashableImage, match="flat"):
        decode(png_bytes(a), SETTINGS)


def test_five_by_five_textured_image_loads() -> None:
    a = _grey3(np.where((np.add.outer(np.arange(5), np.arange(5)) % 2) == 0, 0, 255).astype(np.uint8))
    loaded = decode(png_bytes(a), SETTINGS)
    assert loaded.rgb.shape == (5, 5, 3)
    np.testing.assert_array_equal(loaded.rgb, a)


# --------------------------------------------------------------------------- paths


def test_missing_file_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(UnreadablePath):
        load_image(tmp_path / "nope.jpg", SETTINGS)
    with pytest.raises(UnreadablePath):
        read_bytes(tmp_path / "nope.jpg", SETTINGS)


def test_directory_is_unreadable(tmp_path: Path) -> None:
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    with pytest.raises(UnreadablePath, match="not a regular file"):
        load_image(folder, SETTINGS)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_is_unreadable_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(UnreadablePath, match="not a regular file"):
        load_image(fifo, SETTINGS)


def test_broken_symlink_is_unreadable(tmp_path: Path) -> None:
    link = tmp_path / "dangling.png"
    link.symlink_to(tmp_path / "gone.png")
    with pytest.raises(UnreadablePath):
        load_image(link, SETTINGS)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read a mode-000 file")
def test_file_without_read_permission_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "locked.png"
    path.write_bytes(png_bytes(noise_rgb(16, 16, seed=23)))
    path.chmod(0)
    try:
        with pytest.raises(UnreadablePath):
            load_image(path, SETTINGS)
    finally:
        path.chmod(0o644)


def test_every_error_is_an_image_error() -> None:
    for cls in (CorruptImage, DecompressionBomb, UnhashableImage, UnreadablePath, UnsupportedFormat):
        assert issubclass(cls, ImageError)


# --------------------------------------------------------------------------- identity


def test_sha256_is_that_of_the_file_bytes(tmp_path: Path) -> None:
    data = jpeg_bytes(noise_rgb(32, 48, seed=24))
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    loaded = load_image(path, SETTINGS)
    assert isinstance(loaded, LoadedImage)
    assert loaded.sha256 == hashlib.sha256(data).hexdigest()
    assert decode(data, SETTINGS).sha256 == hashlib.sha256(data).hexdigest()
    assert loaded.format == "JPEG"
    assert (loaded.width, loaded.height) == (48, 32)


# --------------------------------------------------------------------------- prepare_batch


def test_prepare_batch_reports_each_bad_item_and_keeps_the_good_ones(tmp_path: Path) -> None:
    settings = SETTINGS.replace(max_file_bytes=50_000)

    def put(name: str, data: bytes) -> str:
        path = tmp_path / name
        path.write_bytes(data)
        return str(path)

    good_a = noise_rgb(48, 64, seed=30)
    good_b = noise_rgb(40, 40, seed=31)
    half_jpeg = jpeg_bytes(noise_rgb(64, 80, seed=32))
    folder = tmp_path / "folder.png"
    folder.mkdir()
    oversized = rng(33).integers(0, 256, 60_000, dtype=np.uint8).tobytes()

    items = [
        (put("good_a.png", png_bytes(good_a)), None),
        (put("bomb.png", black_bilevel_png(9000, 9000)), "DecompressionBomb"),
        (put("half.jpg", half_jpeg[: len(half_jpeg) // 2]), "CorruptImage"),
        (put("noise.jpg", rng(34).integers(0, 256, 2048, dtype=np.uint8).tobytes()), "UnsupportedFormat"),
        (put("doc.jpg", _pillow_pdf()), "UnsupportedFormat"),
        (put("empty.png", b""), "UnsupportedFormat"),
        (str(tmp_path / "missing.png"), "UnreadablePath"),
        (str(folder), "UnreadablePath"),
        (put("huge.png", oversized), "DecompressionBomb"),
        (put("flat.png", png_bytes(np.full((32, 32, 3), 90, np.uint8))), "UnhashableImage"),
        (put("tiny.png", png_bytes(noise_rgb(3, 30, seed=35))), "UnhashableImage"),
        (put("good_b.jpg", jpeg_bytes(good_b)), None),
    ]
    paths = [p for p, _ in items]
    for p, _ in items:
        if Path(p).is_file():
            assert Path(p).stat().st_size <= 50_000 or p.endswith("huge.png")

    out = prepare_batch(paths, settings)

    assert [r.path for r in out] == paths
    for result, (path, expected_error) in zip(out, items, strict=True):
        if expected_error is None:
            assert result.error is None, result.error
            assert result.ok
            assert not result.skipped
            assert result.codes is not None
            assert result.small is not None
            assert result.small.shape == (settings.image_size, settings.image_size, 3)
            assert result.small.dtype == np.uint8
            assert result.sha256 == hashlib.sha256(Path(path).read_bytes()).hexdigest()
        else:
            assert result.error is not None, path
            assert result.error.startswith(expected_error + ": "), (path, result.error)
            assert not result.ok
            assert result.codes is None and result.small is None
            with pytest.raises(ValueError):
                _ = result.cnn_input
    assert (out[0].width, out[0].height) == (64, 48)
    assert (out[-1].width, out[-1].height) == (40, 40)
    # items that were read have their content hash even when they fail to decode
    assert out[2].sha256 == hashlib.sha256(half_jpeg[: len(half_jpeg) // 2]).hexdigest()
    # items that could not be read have none
    assert out[6].sha256 is None and out[7].sha256 is None and out[8].sha256 is None


def test_prepare_batch_skips_known_content_without_decoding(tmp_path: Path) -> None:
    known_data = png_bytes(noise_rgb(32, 32, seed=36))
    new_data = png_bytes(noise_rgb(32, 32, seed=37))
    (tmp_path / "known.png").write_bytes(known_data)
    (tmp_path / "new.png").write_bytes(new_data)
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    known_sha = hashlib.sha256(known_data).hexdigest()
    asked: list[list[str]] = []

    def known(shas):
        asked.append(list(shas))
        return {known_sha}

    paths = [str(tmp_path / n) for n in ("known.png", "new.png", "bad.png", "missing.png")]
    out = prepare_batch(paths, SETTINGS, known=known)
    assert len(asked) == 1
    assert asked[0] == [
        known_sha,
        hashlib.sha256(new_data).hexdigest(),
        hashlib.sha256(b"not an image at all").hexdigest(),
    ]
    assert out[0].skipped and out[0].sha256 == known_sha and out[0].codes is None and out[0].error is None
    assert out[1].ok and not out[1].skipped
    assert out[2].error is not None and out[2].error.startswith("UnsupportedFormat: ")
    assert out[3].error is not None and out[3].error.startswith("UnreadablePath: ")

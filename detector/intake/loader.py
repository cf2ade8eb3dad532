"""The one safe loader every stage uses: bytes in, an 8-bit RGB array out, or a clear
per-image error.

Policy:
- formats are allow-listed (JPEG, PNG, GIF, WebP, BMP, TIFF); Pillow is told to try only
  those parsers, so EPS/PDF/FITS/SVG bytes are never parsed, whatever their extension;
- the pixel count is checked from the header, before any pixel is decoded (a WebP's before
  Pillow opens it: libwebp allocates its canvas on open); untrusted bytes are decoded by
  Pillow only, after that check (OpenCV only resizes arrays we already hold);
- whatever Pillow raises on malformed bytes (:data:`PILLOW_FAILURES`) is a ``CorruptImage``;
- animated images (GIF, WebP, APNG): the first frame is used, and ``animated`` says so;
- EXIF orientation is applied; alpha is composited on a fixed white background;
- 16-bit, 32-bit and float greyscale are rescaled to 8 bits; palette, CMYK, YCbCr, 1-bit
  are converted to RGB;
- images with a side under ``min_side`` pixels or with almost no variation are unhashable;
- large images are decoded small (``decode_side``): no stage needs more than about 500 pixels
  on the longer side, so a JPEG is decoded at 1/2, 1/4 or 1/8 scale in the DCT domain
  (libjpeg skips most of the inverse DCT and colour conversion) and any image still a whole
  factor too large is box-reduced, never below ``decode_side`` on the longer side nor below
  the CNN input side on the shorter one.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import struct
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from detector.config import Settings
from detector.errors import (
    CorruptImage,
    DecompressionBomb,
    UnhashableImage,
    UnreadablePath,
    UnsupportedFormat,
)

# Decodes in this process take turns: the warning filters are the process's, and
# warnings.catch_warnings restores what it saw on entry, so two threads inside it at once (stage
# 3's, decoding catalog images beside the main thread) can leave every warning silenced. The
# scan's own queries decode in worker processes, one at a time each.
_SILENCED = threading.Lock()

ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
)
BACKGROUND_RGB: tuple[int, int, int] = (255, 255, 255)

# What Pillow raises while it reads malformed bytes: OSError and SyntaxError mostly, but its
# plugins also trip on IndexError, KeyError, struct.error, ZeroDivisionError, their own
# asserts... (fuzz/fuzz_loader.py finds them). Raised from Pillow, each means one thing: this
# image is corrupt, the run goes on. Not ``Exception`` itself: an exception raised by a signal
# handler (the CLI's SIGTERM stop) must pass through the loader.
PILLOW_FAILURES: tuple[type[Exception], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    struct.error,
    EOFError,
    LookupError,  # IndexError, KeyError
    TypeError,
    AttributeError,
    ArithmeticError,  # ZeroDivisionError, OverflowError
    AssertionError,
    RuntimeError,  # RecursionError, NotImplementedError
    MemoryError,
    BufferError,
)


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image ready for every stage.

    ``rgb``: (h, w, 3) uint8, orientation applied, alpha composited; for a large image
    smaller than the original (see ``Settings.decode_side``), with the same aspect ratio.
    ``width``, ``height``: the original image's size in pixels, upright (what the catalog
    stores), whatever size ``rgb`` was decoded at.
    ``sha256``: hex digest of the file's bytes (the content identity used to skip repeats).
    """

    rgb: np.ndarray
    sha256: str
    format: str
    animated: bool
    width: int
    height: int


def read_bytes(path: str | os.PathLike[str], settings: Settings) -> bytes:
    """The bytes of a regular file, refusing missing, special and oversized files."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        raise UnreadablePath(f"cannot read {p}: {e.strerror or e}") from e
    except ValueError as e:  # a NUL byte in the name (a damaged list file): no such file can exist
        raise UnreadablePath(f"not a usable file name: {os.fspath(path)!r}") from e
    if not stat.S_ISREG(st.st_mode):  # a FIFO or a device is never even opened
        raise UnreadablePath(f"not a regular file: {p}")
    within_size_limit(st.st_size, settings)
    try:
        # The path may have been swapped since the stat (a crawl folder changes under a long
        # run): open without blocking, so a FIFO put there cannot hang the run, and judge what
        # was opened. The read stops one byte past the limit, so a file that grew is refused.
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise UnreadablePath(f"cannot read {p}: {e.strerror or e}") from e
    try:
        with open(fd, "rb", closefd=True) as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UnreadablePath(f"not a regular file: {p}")
            return f.read(settings.max_file_bytes + 1)
    except OSError as e:
        raise UnreadablePath(f"cannot read {p}: {e.strerror or e}") from e


def within_size_limit(size: int, settings: Settings, what: str = "file") -> None:
    """Raise :class:`DecompressionBomb` for an input of ``size`` bytes over ``max_file_bytes``."""
    if size > settings.max_file_bytes:
        raise DecompressionBomb(f"{what} is {size} bytes, over the limit of {settings.max_file_bytes}")


def content_hash(data: bytes) -> str:
    """Hex sha256 of the bytes: the identity of an image's content."""
    return hashlib.sha256(data).hexdigest()


def decode(data: bytes, settings: Settings, sha256: str | None = None) -> LoadedImage:
    """Decode image bytes safely into a :class:`LoadedImage`.

    Raises a subclass of :class:`detector.errors.ImageError` for any bad input.
    """
    within_size_limit(len(data), settings, "image")
    if not data:
        raise UnsupportedFormat("empty file")
    _check_declared_size(data, settings)
    with _SILENCED, warnings.catch_warnings():
        # Pillow warns on what it forgives (corrupt EXIF, odd palettes, its own bomb limit):
        # each bad item is an error of its own or nothing, never noise on a cron job's stderr.
        warnings.simplefilter("ignore")
        try:
            im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        except Image.DecompressionBombError as e:
            raise DecompressionBomb(_bomb(e, settings)) from e
        except Image.UnidentifiedImageError as e:
            raise UnsupportedFormat(
                "not an image in an allowed format (" + ", ".join(ALLOWED_FORMATS) + ")"
            ) from e
        except PILLOW_FAILURES as e:
            raise CorruptImage(f"unreadable image header: {_why(e)}") from e
        with im:
            width, height = im.size
            if width * height > settings.max_pixels:
                raise DecompressionBomb(
                    f"{width}x{height} = {width * height} pixels, over the limit of {settings.max_pixels}"
                )
            if min(width, height) < settings.min_side:
                raise UnhashableImage(f"{width}x{height} is smaller than {settings.min_side} px on a side")
            if max(width, height) > settings.max_aspect * min(width, height):
                raise UnhashableImage(
                    f"{width}x{height} is a strip (sides over {settings.max_aspect:g} to 1): "
                    "no picture a copy could be compared with"
                )
            fmt = im.format or "?"
            try:
                # is_animated looks for a second frame only (n_frames would walk them all), and
                # only the first frame is ever decoded: the cost of an animation is that of
                # its first frame plus one pass over its bytes, whatever its frame count.
                animated = bool(getattr(im, "is_animated", False))
                im.seek(0)
                full_size = im.size
                factor = shrink_factor(*full_size, settings)
                if factor > 1:
                    # DCT-domain scaling: only JPEG implements draft, elsewhere a no-op. Asking
                    # for (w // k, h // k) makes Pillow pick exactly 1/k (k a power of two).
                    k = min(8, 1 << (factor.bit_length() - 1))
                    im.draft("RGB", (max(1, full_size[0] // k), max(1, full_size[1] // k)))
                im.load()
                scaled = im.size != full_size
                # Orientation read as exif_transpose reads it: 5 to 8 swap the sides.
                turned = im.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)
                ImageOps.exif_transpose(im, in_place=True)  # in place: no copy when upright
                rgb_image = _rgb_image(im)
                rest = shrink_factor(rgb_image.width, rgb_image.height, settings)
                if rest > 1:
                    rgb_image = rgb_image.reduce(rest)
                    scaled = True
                rgb = np.ascontiguousarray(np.asarray(rgb_image, dtype=np.uint8))
            except Image.DecompressionBombError as e:
                raise DecompressionBomb(_bomb(e, settings)) from e
            except PILLOW_FAILURES as e:
                raise CorruptImage(f"cannot decode {fmt} data: {_why(e)}") from e
    check_hashable(rgb, settings)
    if scaled:
        width, height = full_size[::-1] if turned else full_size
    else:
        height, width = rgb.shape[:2]
    return LoadedImage(
        rgb=rgb,
        sha256=sha256 or content_hash(data),
        format=fmt,
        animated=animated,
        width=width,
        height=height,
    )


def shrink_factor(width: int, height: int, settings: Settings) -> int:
    """The largest whole factor an image of ``width`` x ``height`` pixels may be decoded
    smaller by (sides rounded up), keeping its longer side at least ``settings.decode_side``
    pixels and its shorter side at least ``settings.image_size`` (the CNN squashes both sides
    to that) or whole; 1 when ``decode_side`` is 0 or the image is small already."""
    side = settings.decode_side
    longer, shorter = max(width, height), min(width, height)
    if side <= 0 or longer < 2 * side - 1:
        return 1
    keep_short = min(shorter, settings.image_size)
    factor = longer // side + 1  # ceil(longer / factor) >= side cannot hold above this
    while factor > 1 and (-(-longer // factor) < side or -(-shorter // factor) < keep_short):
        factor -= 1
    return factor


def _bomb(e: Exception, settings: Settings) -> str:
    """Pillow's bomb refusal in copyscan's words: the pixels it declares and our limit."""
    found = re.search(r"\((\d+) pixels\)", str(e))
    declared = f"{int(found.group(1))} pixels, " if found else "more pixels than allowed, "
    return f"the image declares {declared}over the limit of {settings.max_pixels}"


def _why(e: BaseException) -> str:
    """An exception's message, or its type's name when it has none."""
    return str(e) or type(e).__name__


def _check_declared_size(data: bytes, settings: Settings) -> None:
    """Refuse a WebP whose header declares too many pixels before Pillow sees it: libwebp's
    animation decoder allocates its canvas (8 bytes a pixel) as soon as the file is opened,
    before any size check could run; other formats allocate nothing until they decode."""
    size = _webp_canvas(data)
    if size is not None and size[0] * size[1] > settings.max_pixels:
        width, height = size
        raise DecompressionBomb(
            f"{width}x{height} = {width * height} pixels, over the limit of {settings.max_pixels}"
        )


def _webp_canvas(data: bytes) -> tuple[int, int] | None:
    """(width, height) a WebP file's first chunk declares, or None if it is not one we know."""
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":  # extended format (animation, alpha, metadata): 24-bit sizes minus one
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # lossy key frame: 14-bit sizes
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    if chunk == b"VP8L" and data[20] == 0x2F:  # lossless: two 14-bit sizes minus one
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def load_image(path: str | os.PathLike[str], settings: Settings) -> LoadedImage:
    """Read and decode one image file; see :func:`decode`."""
    data = read_bytes(path, settings)
    return decode(data, settings)


def to_rgb(im: Image.Image) -> np.ndarray:
    """Any Pillow mode to a (h, w, 3) uint8 array, alpha composited on ``BACKGROUND_RGB``."""
    return np.ascontiguousarray(np.asarray(_rgb_image(im), dtype=np.uint8))


def _rgb_image(im: Image.Image) -> Image.Image:
    """Any Pillow mode to a mode-'RGB' image, alpha composited on ``BACKGROUND_RGB``."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        im = Image.fromarray(_to_8bit(np.asarray(im)), mode="L")
        mode = "L"
    # Palette and colour-key ("transparency" in info, PNG tRNS on L/RGB) transparency both
    # become real alpha through Pillow's RGBA conversion, then share one composite.
    if mode == "La":  # greyscale with premultiplied alpha (TIFF): Pillow converts it only to LA
        im = im.convert("LA")
        mode = "LA"
    if mode in ("P", "PA", "LA", "RGBa") or "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        background = Image.new("RGBA", im.size, (*BACKGROUND_RGB, 255))
        im = Image.alpha_composite(background, im)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return im


def _to_8bit(a: np.ndarray) -> np.ndarray:
    """High-bit-depth greyscale to uint8: 16-bit ranges scale by 1/257, anything else by its
    own range (float images often hold 0..1, 32-bit integers anything)."""
    with np.errstate(invalid="ignore"):  # a signalling NaN in a float image warns when cast
        a = a.astype(np.float64, copy=False)
    finite = np.isfinite(a)
    if not finite.all():
        a = np.where(finite, a, 0.0)
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0 and hi <= 1.0:
        scaled = a * 255.0
    elif lo >= 0 and hi <= 65535 and hi > 255:
        scaled = a / 257.0
    elif lo >= 0 and hi <= 255:
        scaled = a
    else:
        scaled = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def check_hashable(rgb: np.ndarray, settings: Settings) -> None:
    """Refuse images too small or too flat to carry a perceptual code."""
    h, w = rgb.shape[:2]
    if min(h, w) < settings.min_side:
        raise UnhashableImage(f"{w}x{h} is smaller than {settings.min_side} px on a side")
    # A cheap greyscale on a subsample is enough to tell a flat image.
    step = max(1, int(max(h, w) // 256))
    sample = rgb[::step, ::step].astype(np.float32)
    grey = sample @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if float(grey.std()) < settings.flat_std:
        raise UnhashableImage(
            f"flat image (grey level std {grey.std():.2f} < {settings.flat_std}): no structure to hash"
        )

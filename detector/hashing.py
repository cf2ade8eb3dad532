"""Stage 1 codes: 64-bit pHash and dHash, identical to imagehash's ``phash``/``dhash`` on the
same decoded image, held as Python ints / numpy uint64 whose most significant bit is the first
bit of imagehash's bit array (so ``f"{code:016x}"`` is imagehash's hex string)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image

HASHER_ID = "phash64+dhash64:imagehash-4.3-compatible:lanczos:v1"
_PHASH_SIZE = 32  # imagehash: hash_size 8 * highfreq_factor 4
_LOW = 8


@dataclass(frozen=True)
class Codes:
    """The stage-1 codes of one image, unsigned 64-bit ints."""

    phash: int
    dhash: int

    @property
    def phash_hex(self) -> str:
        return f"{self.phash:016x}"

    @property
    def dhash_hex(self) -> str:
        return f"{self.dhash:016x}"


@cache
def _dct_rows(n: int, k: int) -> np.ndarray:
    """The first ``k`` rows of the unnormalised DCT-II matrix of size ``n`` (scipy's
    ``fftpack.dct`` convention, ``y[k] = 2 sum x[n] cos(pi k (2n+1) / 2N)``): (k, n) float64."""
    kk = np.arange(k)[:, None]
    nn = np.arange(n)[None, :]
    return 2.0 * np.cos(np.pi * kk * (2 * nn + 1) / (2 * n))


def pack_bits(bits: np.ndarray) -> int:
    """A (64,) or (8, 8) bool array to an unsigned int, first bit most significant."""
    return int.from_bytes(np.packbits(bits.reshape(-1).astype(bool)).tobytes(), "big")


def unpack_bits(code: int) -> np.ndarray:
    """The inverse of :func:`pack_bits`: (8, 8) bool."""
    raw = np.frombuffer(int(code).to_bytes(8, "big"), dtype=np.uint8)
    return np.unpackbits(raw).astype(bool).reshape(8, 8)


def phash_from_grey(grey: Image.Image) -> int:
    """pHash of a mode-'L' image: 32x32 Lanczos, 2-D DCT, top-left 8x8 above its median."""
    pixels = np.asarray(grey.resize((_PHASH_SIZE, _PHASH_SIZE), Image.Resampling.LANCZOS), dtype=np.float64)
    d = _dct_rows(_PHASH_SIZE, _LOW)
    low = d @ pixels @ d.T  # only the 8x8 low frequencies are ever used
    return pack_bits(low > np.median(low))


def dhash_from_grey(grey: Image.Image) -> int:
    """dHash of a mode-'L' image: 9x8 Lanczos, each pixel brighter than its left neighbour."""
    pixels = np.asarray(grey.resize((_LOW + 1, _LOW), Image.Resampling.LANCZOS), dtype=np.int16)
    return pack_bits(pixels[:, 1:] > pixels[:, :-1])


def image_codes(rgb: np.ndarray) -> Codes:
    """pHash and dHash of a (h, w, 3) uint8 RGB array (Pillow's ITU-R 601 luma, as imagehash)."""
    grey = Image.fromarray(rgb, mode="RGB").convert("L")
    return Codes(phash=phash_from_grey(grey), dhash=dhash_from_grey(grey))


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two 64-bit codes."""
    return (int(a) ^ int(b)).bit_count()


def to_sqlite(code: int) -> int:
    """Unsigned 64-bit code to the signed int64 SQLite stores without overflow."""
    return code - (1 << 64) if code >= (1 << 63) else code


def from_sqlite(value: int) -> int:
    """The inverse of :func:`to_sqlite`."""
    return value + (1 << 64) if value < 0 else value

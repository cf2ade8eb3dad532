"""Fuzz target for the safe loader and the front of the pipeline.

The property checked for any bytes: :func:`detector.intake.loader.decode` either returns an
(h, w, 3) uint8 RGB image within the configured limits or raises an
:class:`detector.errors.ImageError` subclass, and an image it returns always goes through
hashing, trimming, stage-3 greyscale and the CNN resize (:func:`detector.intake.prepare.prepare_bytes`)
without raising. Anything else is a crash.

With atheris (``pip install -e '.[fuzz]'``), coverage-guided, for a fixed time::

    python fuzz/fuzz_loader.py -max_total_time=60 [CORPUS_DIR ...]

Without a corpus folder the seeds (every allowed format and mode, built from fixtures/) are
written to a temporary folder first. Without atheris, or with ``--plain``, the same target
runs under a plain random-mutation loop that honours ``-max_total_time`` and ``-seed``.
``tests/test_fuzz_loader.py`` runs the target over a fixed, seeded set of mutated inputs.
"""

from __future__ import annotations

import io
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
if str(ROOT) not in sys.path:  # run as a script from a checkout: find detector/ beside fuzz/
    sys.path.insert(1, str(ROOT))

try:  # atheris is optional: only the coverage-guided mode needs it
    import atheris
except ImportError:  # pragma: no cover - depends on the environment
    atheris = None

if atheris is not None and __name__ == "__main__":
    # Instrument the Python code on the path of untrusted bytes: Pillow's format plugins and
    # copyscan's loader, so coverage guides the mutations (Pillow's C decoders are not).
    with atheris.instrument_imports(include=["PIL", "detector"]):
        import numpy as np
        from PIL import (  # the allowed formats' plugins, imported here so they are instrumented
            BmpImagePlugin,  # noqa: F401
            GifImagePlugin,  # noqa: F401
            Image,
            ImageFile,  # noqa: F401
            ImageOps,  # noqa: F401
            JpegImagePlugin,  # noqa: F401
            PngImagePlugin,  # noqa: F401
            TiffImagePlugin,  # noqa: F401
            WebPImagePlugin,  # noqa: F401
        )

        from detector.config import Settings
        from detector.errors import ImageError
        from detector.intake.loader import content_hash, decode
        from detector.intake.prepare import prepare_bytes
else:
    import numpy as np
    from PIL import Image

    from detector.config import Settings
    from detector.errors import ImageError
    from detector.intake.loader import content_hash, decode
    from detector.intake.prepare import prepare_bytes

# Small limits keep each input cheap; the limits themselves are part of what is checked.
SETTINGS = Settings().replace(max_pixels=1_000_000, max_file_bytes=2_000_000)


class LoaderContractBroken(AssertionError):
    """The loader answered something other than a sane image or an ImageError."""


def check_one(data: bytes) -> bool:
    """The fuzz target: raises only when the loader breaks its contract (any exception that
    is not an ImageError escapes, and a returned image is checked). True when ``data``
    decoded to an image."""
    try:
        image = decode(data, SETTINGS)
    except ImageError:
        return False
    rgb = image.rgb
    h, w = rgb.shape[:2]
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise LoaderContractBroken(f"decode gave {rgb.shape} {rgb.dtype}")
    if min(h, w) < SETTINGS.min_side or h * w > SETTINGS.max_pixels:
        raise LoaderContractBroken(f"decode gave {w}x{h}, outside the limits")
    # Whole, or decoded smaller (decode_side) and still at least decode_side on the longer side.
    shrunk = w <= image.width and h <= image.height and max(w, h) >= SETTINGS.decode_side
    if ((image.width, image.height) != (w, h) and not shrunk) or image.sha256 != content_hash(data):
        raise LoaderContractBroken("decode gave inconsistent metadata")
    prepared = prepare_bytes("fuzz", data, image.sha256, SETTINGS, catalog=True)
    if not prepared.ok or prepared.error is not None or prepared.small is None:
        raise LoaderContractBroken(f"a decoded image failed the front of the pipeline: {prepared.error}")
    if prepared.small.shape != (SETTINGS.image_size, SETTINGS.image_size, 3):
        raise LoaderContractBroken(f"CNN input is {prepared.small.shape}")
    return True


def test_one_input(data: bytes) -> None:
    """atheris's entry point."""
    check_one(data)


# --------------------------------------------------------------------------- seeds


def _encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def _fixture_pictures() -> Iterator[np.ndarray]:
    """Each fixture image shrunk to about 48 px, as RGB arrays (generated ones if the
    fixtures are missing)."""
    paths = sorted(FIXTURES.glob("catalog/*.jpg"))[:3] + sorted(FIXTURES.glob("crawl/other-synthetic-*.png"))
    for path in paths:
        with Image.open(path) as im:
            im.thumbnail((48, 48))
            yield np.asarray(im.convert("RGB"))
    rng = np.random.default_rng(0)
    yield rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)


def seed_corpus() -> list[bytes]:
    """Small valid (and a few invalid) inputs covering every allowed format, the Pillow modes
    the loader converts, animation, transparency and EXIF orientation."""
    seeds: list[bytes] = []
    for path in ("crawl/broken-download.jpg", "crawl/flat-grey.png"):
        if (FIXTURES / path).is_file():
            seeds.append((FIXTURES / path).read_bytes())
    pictures = list(_fixture_pictures())
    for a in pictures[:2]:
        im = Image.fromarray(a)
        seeds.append(_encode(im, "JPEG", quality=80))
        seeds.append(_encode(im, "JPEG", quality=60, progressive=True))
        seeds.append(_encode(im, "PNG"))
        seeds.append(_encode(im, "BMP"))
        seeds.append(_encode(im, "WEBP", quality=70))
        seeds.append(_encode(im, "TIFF", compression="tiff_deflate"))
        seeds.append(_encode(im.convert("P"), "GIF"))
    a = pictures[-1]
    im = Image.fromarray(a)
    grey = im.convert("L")
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010E] = "<script>alert(1)</script>"
    seeds += [
        _encode(im, "JPEG", exif=exif),
        _encode(im.convert("CMYK"), "JPEG"),
        _encode(grey, "JPEG"),
        _encode(im.convert("RGBA"), "PNG"),
        _encode(im.convert("LA"), "PNG"),
        _encode(im.convert("P"), "PNG", transparency=0),
        _encode(im.convert("1"), "PNG"),
        _encode(Image.fromarray(np.asarray(grey).astype(np.uint16) * 257), "PNG"),
        _encode(Image.fromarray(np.asarray(grey).astype(np.float32) / 255), "TIFF"),
        _encode(im.convert("YCbCr"), "TIFF"),
        _encode(im.convert("RGBA"), "WEBP", lossless=True),
        _encode(im.convert("P"), "BMP"),
        _encode(im, "TIFF", compression="jpeg"),
        _encode(im, "TIFF", compression="packbits"),
    ]
    frames = [Image.fromarray(np.roll(a, k * 5, axis=1)) for k in range(3)]
    seeds += [
        _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0),
        _encode(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=50),
        _encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50, lossless=True),
        _encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
    ]
    return seeds


# --------------------------------------------------------------------------- mutations (no atheris)

_INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFF_FFFF, 0xFFFF_FFFF)


def mutate(data: bytes, rng: random.Random, max_len: int = 200_000) -> bytes:
    """A random mutation of ``data``, roughly like libFuzzer's: flips, byte and word overwrites
    with boundary values (sizes, counts, offsets in headers), inserts, deletes, duplicated
    and truncated runs. 1 to 4 of them."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(8)
        n = len(b)
        # Headers hold the fields worth breaking: aim at the first 64 bytes half of the time.
        pos = rng.randrange(min(n, 64)) if n and rng.random() < 0.5 else (rng.randrange(n) if n else 0)
        if kind == 0 and n:
            b[pos] ^= 1 << rng.randrange(8)
        elif kind == 1 and n:
            b[pos] = rng.randrange(256)
        elif kind == 2 and n >= 4:
            width = rng.choice((1, 2, 4))
            value = rng.choice(_INTERESTING) & ((1 << (8 * width)) - 1)
            pos = min(pos, n - width)
            b[pos : pos + width] = value.to_bytes(width, rng.choice(("little", "big")))
        elif kind == 3:
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif kind == 4 and n:
            del b[pos : pos + rng.randint(1, 32)]
        elif kind == 5 and n:
            end = min(n, pos + rng.randint(1, 256))
            b[pos:pos] = b[pos:end] * rng.randint(1, 8)
        elif kind == 6 and n:
            del b[rng.randrange(n) :]
        elif kind == 7 and n >= 2:
            i, j = sorted(rng.sample(range(n), 2))
            b[i:j] = bytes(reversed(b[i:j]))
    return bytes(b[:max_len])


def mutated_corpus(count: int, seed: int = 0) -> list[bytes]:
    """``count`` mutated inputs from :func:`seed_corpus`, the same ones for the same seed."""
    rng = random.Random(seed)
    seeds = seed_corpus()
    return [mutate(rng.choice(seeds), rng) for _ in range(count)]


def run_plain(seconds: float, seed: int, target: Callable[[bytes], bool] = check_one) -> int:
    """Feed seeds and random mutations of them to ``target`` for ``seconds``; returns how many
    inputs ran. Mutants that still decode become parents too (a cheap stand-in for coverage
    guidance). A contract break is saved to ``crash-<sha256>`` and raised."""
    rng = random.Random(seed)
    pool = seed_corpus()
    deadline = time.monotonic() + seconds
    runs = 0
    for data in pool:
        _run_saving(target, data)
        runs += 1
    while time.monotonic() < deadline:
        data = mutate(rng.choice(pool), rng)
        if _run_saving(target, data) and len(pool) < 5000:
            pool.append(data)
        runs += 1
    return runs


def _run_saving(target: Callable[[bytes], bool], data: bytes) -> bool:
    try:
        return target(data)
    except BaseException:
        name = f"crash-{content_hash(data)}"
        Path(name).write_bytes(data)
        print(f"contract broken; input written to {name}", file=sys.stderr)
        raise


def _flag(argv: list[str], name: str, default: str) -> str:
    for arg in argv:
        if arg.startswith(f"-{name}="):
            return arg.split("=", 1)[1]
    return default


def main(argv: list[str]) -> None:
    if atheris is None or "--plain" in argv:
        seconds = float(_flag(argv, "max_total_time", "60"))
        seed = int(_flag(argv, "seed", "0"))
        runs = run_plain(seconds, seed)
        print(f"plain mutation loop: {runs} inputs in {seconds:.0f} s, no contract broken")
        return
    corpora = [a for a in argv[1:] if not a.startswith("-")]
    if not corpora:
        corpora = [tempfile.mkdtemp(prefix="copyscan-fuzz-corpus-")]
        argv = [*argv, corpora[0]]
    if not any(Path(c).is_dir() and any(Path(c).iterdir()) for c in corpora):
        Path(corpora[0]).mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(seed_corpus()):
            Path(corpora[0], f"seed-{i:03d}").write_bytes(data)
        print(f"seeds written to {corpora[0]}", file=sys.stderr)
    if not any(a.startswith("-max_len=") for a in argv):
        argv = [*argv, "-max_len=65536"]
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)

"""The small decode (``Settings.decode_side``): large images are decoded at a fraction of
their size, JPEG in the DCT domain, and every stage sees nearly what a full decode gives it.

The catalog's stored codes may have been made from full decodes, so the bounds below are the
drift a query decoded small may carry against them. Measured over 10 scikit-image samples
upscaled to five sizes from 640x480 to 4000x3000, as JPEG and at one size as PNG (60 images),
with decode_side 448 and the codes' box reduction to 128 px: pHash at most 2 bits (mean
0.17), dHash at most 9 (mean 0.67; the 9 is the brick texture at 4000x3000, every other
image at most 3), whole-image descriptor cosine at least 0.992 (mean 0.998). The content box
is a threshold decision and can flip on a borderline image (text on a smooth gradient, one
grey level apart), so it is not compared here."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image

from detector.config import Settings
from detector.errors import CorruptImage
from detector.intake.loader import decode, load_image, shrink_factor
from detector.intake.prepare import prepare_bytes
from detector.stage1.hashing import hamming, image_codes
from detector.stage2.embedding import resize_for_cnn

SETTINGS = Settings()
FULL = SETTINGS.replace(decode_side=0)
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SOURCES = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "camera",
    "coins",
    "brick",  # fine texture: the hardest for dHash
)
SIZES = ((640, 480), (866, 1155), (1155, 866), (2048, 1536), (4000, 3000))
PHASH_BOUND = 6
DHASH_BOUND = 10
MEAN_BOUND = 1.0
COSINE_FLOOR = 0.98


def sample(name: str) -> np.ndarray:
    a = getattr(skimage.data, name)()
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    return np.ascontiguousarray(a[..., :3].astype(np.uint8))


def encoded(rgb: np.ndarray, fmt: str = "JPEG", mode: str = "RGB", **params: object) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb).convert(mode).save(out, fmt, quality=90, **params)
    return out.getvalue()


def upscaled(name: str, size: tuple[int, int]) -> np.ndarray:
    return cv2.resize(sample(name), size, interpolation=cv2.INTER_CUBIC)


@pytest.fixture(scope="module")
def pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(label, small decode, full decode) of every sample at every size, as JPEG, and at two
    sizes as PNG (box-reduced instead of drafted)."""
    out = []
    for name in SOURCES:
        for size in SIZES:
            formats = ("JPEG", "PNG") if size == (1155, 866) else ("JPEG",)
            for fmt in formats:
                data = encoded(upscaled(name, size), fmt)
                out.append((f"{name} {size} {fmt}", decode(data, SETTINGS).rgb, decode(data, FULL).rgb))
    return out


@pytest.mark.parametrize(
    ("size", "changes", "factor"),
    [
        ((1155, 866), {}, 2),
        ((1000, 1000), {}, 2),  # 500 x 500, a half in the DCT domain
        ((890, 890), {}, 1),  # half would be 445 px: under decode_side
        ((895, 700), {}, 2),  # sides round up: 448 x 350
        ((4000, 3000), {}, 8),  # 500 x 375; a ninth would be 445 px
        ((4000, 3000), {"decode_side": 0}, 1),
        ((4000, 100), {}, 1),  # the shorter side would fall below the CNN input
        ((8000, 1000), {}, 4),  # 2000 x 250: the shorter side keeps the CNN's 224
        ((400, 300), {}, 1),
    ],
)
def test_shrink_factor(size, changes, factor):
    assert shrink_factor(*size, SETTINGS.replace(**changes)) == factor


def test_shrink_factor_is_the_largest_that_keeps_both_sides():
    def keeps(width: int, height: int, k: int) -> bool:
        longer, shorter = max(width, height), min(width, height)
        keep_short = min(shorter, SETTINGS.image_size)
        return -(-longer // k) >= SETTINGS.decode_side and -(-shorter // k) >= keep_short

    for width in range(5, 5000, 41):
        for height in (5, 100, 223, 224, 225, 511, 512, 1023, 1024, 2049, 7000):
            k = shrink_factor(width, height, SETTINGS)
            assert k >= 1 and (k == 1 or keeps(width, height, k)), (width, height, k)
            assert not keeps(width, height, k + 1), (width, height, k)  # the sides only shrink as k grows


def test_small_images_decode_exactly_as_before():
    # Nothing the fixtures hold is over 512 px, so their golden values stay imagehash-exact.
    for path in sorted(FIXTURES.glob("*/*.*")):
        if path.suffix not in (".jpg", ".png") or path.name.startswith(("broken", "flat")):
            continue
        assert np.array_equal(load_image(path, SETTINGS).rgb, load_image(path, FULL).rgb), path


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_large_jpeg_is_decoded_small_and_reports_its_full_size(mode):
    data = encoded(upscaled("coffee", (1155, 866)), mode=mode)
    small, full = decode(data, SETTINGS), decode(data, FULL)
    assert small.rgb.shape == (433, 578, 3)
    assert (small.width, small.height) == (full.width, full.height) == (1155, 866)
    assert small.format == "JPEG"
    shrunk = cv2.resize(full.rgb, (578, 433), interpolation=cv2.INTER_AREA)
    assert np.abs(small.rgb.astype(int) - shrunk).mean() < 3


def test_exif_orientation_is_applied_to_the_small_decode():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: a quarter turn clockwise shows it upright
    data = encoded(upscaled("chelsea", (1600, 1200)), exif=exif.tobytes())
    small, full = decode(data, SETTINGS), decode(data, FULL)
    assert full.rgb.shape == (1600, 1200, 3)
    assert small.rgb.shape == (800, 600, 3)
    assert (small.width, small.height) == (full.width, full.height) == (1200, 1600)
    shrunk = cv2.resize(full.rgb, (600, 800), interpolation=cv2.INTER_AREA)
    assert np.abs(small.rgb.astype(int) - shrunk).mean() < 3


def test_other_formats_are_box_reduced():
    data = encoded(upscaled("rocket", (2048, 1536)), "PNG")
    image = decode(data, SETTINGS)
    assert image.rgb.shape == (384, 512, 3)
    assert (image.width, image.height, image.format) == (2048, 1536, "PNG")


def test_a_jpeg_past_an_eighth_is_drafted_then_reduced():
    settings = SETTINGS.replace(decode_side=64, image_size=32)
    image = decode(encoded(upscaled("astronaut", (2000, 1500))), settings)
    # An eighth in the DCT domain (250 x 188), then a box reduce by 3.
    assert image.rgb.shape == (63, 84, 3)
    assert (image.width, image.height) == (2000, 1500)


def test_a_truncated_large_jpeg_is_still_corrupt():
    data = encoded(upscaled("astronaut", (1600, 1200)))
    with pytest.raises(CorruptImage):
        decode(data[: len(data) // 2], SETTINGS)


def test_the_front_keeps_the_full_size_and_stage_inputs():
    data = encoded(upscaled("astronaut", (4000, 3000)))
    prepared = prepare_bytes("big.jpg", data, "sha", SETTINGS)
    assert prepared.ok and (prepared.width, prepared.height) == (4000, 3000)
    assert prepared.grey is not None and max(prepared.grey.shape) == 500  # an eighth: under VERIFY_SIDE
    assert prepared.small is not None and prepared.small.shape == (224, 224, 3)


def test_codes_stay_close_to_the_full_decode(pairs):
    phash, dhash = [], []
    for label, small, full in pairs:
        a, b = image_codes(small), image_codes(full)
        phash.append(hamming(a.phash, b.phash))
        dhash.append(hamming(a.dhash, b.dhash))
        assert phash[-1] <= PHASH_BOUND and dhash[-1] <= DHASH_BOUND, (label, phash[-1], dhash[-1])
    assert np.mean(phash) <= MEAN_BOUND and np.mean(dhash) <= MEAN_BOUND, (np.mean(phash), np.mean(dhash))


def test_descriptors_stay_close_to_the_full_decode(pairs, models):
    size = models.settings.image_size
    small = models.embed([resize_for_cnn(s, size) for _, s, _ in pairs])
    full = models.embed([resize_for_cnn(f, size) for _, _, f in pairs])
    cosines = (small * full).sum(axis=1)
    worst = int(np.argmin(cosines))
    assert cosines[worst] >= COSINE_FLOOR, (pairs[worst][0], float(cosines[worst]))

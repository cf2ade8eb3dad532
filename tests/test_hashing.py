"""Stage-1 codes: imagehash's on small images, within a few bits of it on large ones (box
reduced first), golden values, packing."""

from __future__ import annotations

import json

import imagehash
import numpy as np
import pytest
import skimage.data
from PIL import Image

from detector.intake.loader import load_image
from detector.stage1.hashing import (
    DIHEDRAL,
    WORK_SIDE,
    Codes,
    dihedral_image,
    from_sqlite,
    hamming,
    image_codes,
    pack_bits,
    to_sqlite,
    undo_dihedral_points,
    unpack_bits,
)

from .conftest import FIXTURES, textured

# The most a large image's codes may differ from imagehash's on the same decoded image (the
# box reduction before the Lanczos resizes). Measured on 1 MP to 12 MP JPEGs: at most 6 and 5
# bits, about 1 on average; the accuracy benchmark is measured with these codes.
PHASH_FROM_IMAGEHASH = 8
DHASH_FROM_IMAGEHASH = 8


def test_golden_values_of_the_fixture_catalog(settings):
    golden = json.loads((FIXTURES / "golden_hashes.json").read_text())
    assert len(golden) == 7
    for name, expected in golden.items():
        codes = image_codes(load_image(FIXTURES / "catalog" / name, settings).rgb)
        ours = (expected["copyscan_phash"], expected["copyscan_dhash"])
        assert (codes.phash_hex, codes.dhash_hex) == ours, name
        assert hamming(codes.phash, int(expected["phash"], 16)) <= PHASH_FROM_IMAGEHASH, name
        assert hamming(codes.dhash, int(expected["dhash"], 16)) <= DHASH_FROM_IMAGEHASH, name


def test_known_hash_of_chelsea():
    # scikit-image's chelsea (uncompressed, so decoder-independent) is 451x300: box-reduced
    # by 2 before hashing, it lands one dHash bit from imagehash 4.3's values.
    codes = image_codes(skimage.data.chelsea())
    assert (codes.phash_hex, codes.dhash_hex) == ("b15fe6465121175e", "5414589aab4fa785")
    assert str(imagehash.phash(Image.fromarray(skimage.data.chelsea()))) == "b15fe6465121175e"
    assert str(imagehash.dhash(Image.fromarray(skimage.data.chelsea()))) == "5414589aab6fa785"


@pytest.mark.parametrize("seed", range(40))
def test_equal_to_imagehash_below_twice_the_working_side(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(5, 2 * WORK_SIDE, size=2)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8) if seed % 2 else textured(seed, (int(w), int(h)))
    codes = image_codes(rgb)
    im = Image.fromarray(rgb)
    assert codes.phash_hex == str(imagehash.phash(im))
    assert codes.dhash_hex == str(imagehash.dhash(im))


@pytest.mark.parametrize("name", ["astronaut", "coffee", "rocket", "hubble_deep_field", "brick", "camera"])
@pytest.mark.parametrize("side", [300, 700, 1500])
def test_close_to_imagehash_on_large_images(name, side):
    a = getattr(skimage.data, name)()
    rgb = np.stack([a] * 3, axis=-1) if a.ndim == 2 else a[..., :3]
    im = Image.fromarray(np.ascontiguousarray(rgb)).resize((side, side * 3 // 4), Image.Resampling.BICUBIC)
    codes = image_codes(np.asarray(im))
    assert hamming(codes.phash, int(str(imagehash.phash(im)), 16)) <= PHASH_FROM_IMAGEHASH
    assert hamming(codes.dhash, int(str(imagehash.dhash(im)), 16)) <= DHASH_FROM_IMAGEHASH


def test_pack_bits_is_imagehash_hex_and_round_trips():
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2, (8, 8)).astype(bool)
    code = pack_bits(bits)
    assert f"{code:016x}" == str(imagehash.ImageHash(bits))
    assert np.array_equal(unpack_bits(code), bits)
    assert pack_bits(np.ones(64, bool)) == 2**64 - 1
    assert pack_bits(np.eye(1, 64, 0, dtype=bool)) == 1 << 63  # first bit is the top bit


def test_sqlite_conversion_keeps_the_top_bit():
    for code in (0, 1, 2**63 - 1, 2**63, 2**64 - 1, 0xC2924C5532BDDFC8):
        stored = to_sqlite(code)
        assert -(2**63) <= stored < 2**63
        assert from_sqlite(stored) == code
    assert np.array([to_sqlite(2**64 - 1)], dtype=np.int64).view(np.uint64)[0] == 2**64 - 1


def test_hamming_counts_bits():
    assert hamming(0, 2**64 - 1) == 64
    assert hamming(0b1011, 0b0001) == 2
    assert Codes(1, 2).phash_hex == "0000000000000001"


def test_resize_and_reencode_stay_close_while_other_images_are_far():
    base = textured(3, (400, 300))
    codes = image_codes(base)
    small = np.asarray(Image.fromarray(base).resize((200, 150), Image.Resampling.BILINEAR))
    assert hamming(image_codes(small).phash, codes.phash) <= 4
    others = [hamming(image_codes(textured(s, (400, 300))).phash, codes.phash) for s in range(10, 20)]
    assert min(others) > 12


@pytest.mark.parametrize("seed", range(6))
def test_dihedral_probes_match_hashing_the_turned_image(seed):
    from detector.stage1.hashing import DIHEDRAL, dihedral_image, dihedral_probes

    rgb = textured(seed, (97, 64)) if seed % 2 else skimage.data.astronaut()[::3, ::2]
    grey = Image.fromarray(np.ascontiguousarray(rgb)).convert("L")
    probes = dihedral_probes(grey, tuple(DIHEDRAL))
    assert [p.transform.turn for p in probes] == list(DIHEDRAL)
    assert (probes[0].phash, probes[0].dhash) == (image_codes(rgb).phash, image_codes(rgb).dhash)
    for p in probes:
        truth = image_codes(dihedral_image(rgb, p.transform.turn))
        assert hamming(p.phash, truth.phash) <= 3, p.transform  # resize rounding differs slightly
        if p.dhash is not None:
            assert hamming(p.dhash, truth.dhash) <= 6, p.transform
        else:
            assert p.transform.turn in ("transpose", "rot90", "rot270", "transverse")


def test_dihedral_names_are_numpy_rotations():
    from detector.stage1.hashing import dihedral_image

    a = np.arange(12).reshape(3, 4)
    assert (dihedral_image(a, "rot90") == np.rot90(a, 1)).all()
    assert (dihedral_image(a, "rot270") == np.rot90(a, -1)).all()
    assert (dihedral_image(a, "rot180") == np.rot90(a, 2)).all()
    assert (dihedral_image(a, "hflip") == np.fliplr(a)).all()
    assert (dihedral_image(a, "vflip") == np.flipud(a)).all()


@pytest.mark.parametrize("name", list(DIHEDRAL))
def test_points_move_back_from_a_turned_image(name):
    """A pixel found at some place in the turned image is put back where it was."""
    h, w = 40, 60
    grid = np.zeros((h, w), np.uint8)
    grid[7, 45] = 255  # row 7, column 45
    turned = dihedral_image(grid, name)
    row, col = np.argwhere(turned == 255)[0]
    th, tw = turned.shape
    ((x, y),) = undo_dihedral_points([((col + 0.5) / tw, (row + 0.5) / th)], name)
    assert x == pytest.approx(45.5 / w, abs=1e-3) and y == pytest.approx(7.5 / h, abs=1e-3)

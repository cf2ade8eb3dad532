"""``evaluate``: metric golden values, calibration, the query set, and the command end to end
on a tiny catalog (the shipped fixtures)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import cli
from detector.scan.scanner import Scanner
from detector.stage1.hashing import HASHER_ID
from detector.stage2.embedding import embedder_id
from detector.storage.store import Store
from detector.tasks.evaluation import (
    build_queries,
    calibrate,
    micro_average_precision,
    precision_recall,
    recall_at_precision,
)

SCORES = np.array([0.9, 0.8, 0.8, 0.5])
CORRECT = np.array([True, False, True, False])


def test_precision_recall_groups_ties():
    t, p, r = precision_recall(SCORES, CORRECT, positives=3)
    assert t.tolist() == [0.9, 0.8, 0.5]
    assert p.tolist() == pytest.approx([1.0, 2 / 3, 0.5])
    assert r.tolist() == pytest.approx([1 / 3, 2 / 3, 2 / 3])


def test_micro_average_precision_golden_and_perfect():
    assert micro_average_precision(SCORES, CORRECT, 3) == pytest.approx(1 / 3 + (2 / 3) * (1 / 3))
    rng = np.random.default_rng(0)
    good = rng.uniform(0.6, 1.0, 50)
    bad = rng.uniform(0.0, 0.59, 80)
    scores = np.r_[good, bad]
    correct = np.r_[np.ones(50, bool), np.zeros(80, bool)]
    assert micro_average_precision(scores, correct, 50) == pytest.approx(1.0)
    assert micro_average_precision(scores, correct, 100) == pytest.approx(0.5)  # half never found
    assert micro_average_precision(np.zeros(0), np.zeros(0, bool), 5) == 0.0


def test_recall_at_precision_and_its_threshold():
    assert recall_at_precision(SCORES, CORRECT, 3, 0.99) == (pytest.approx(1 / 3), 0.9)
    assert recall_at_precision(SCORES, CORRECT, 3, 0.6) == (pytest.approx(2 / 3), 0.8)
    assert recall_at_precision(SCORES, ~CORRECT, 3, 0.99) == (0.0, None)


def test_calibrate_reaches_the_asked_precisions():
    preds = list(zip(SCORES.tolist(), CORRECT.tolist(), strict=True))
    c = calibrate(preds, 3, copy_precision=0.99, near_duplicate_precision=0.6)
    assert c is not None
    assert (c.copy_threshold, c.near_duplicate_threshold) == (0.9, 0.8)
    assert c.recall_copy == pytest.approx(1 / 3)
    assert calibrate([(0.9, False)], 1) is None


def test_a_calibration_on_too_few_pairs_says_why_it_is_unreliable():
    from detector.tasks.evaluation import least_pairs

    # the case: twenty copies, all found, a few look-alikes well below them
    few = [(0.9 - i / 100, True) for i in range(20)] + [(0.3, False)] * 5
    c = calibrate(few, 20)
    assert c is not None and c.near_duplicate_threshold == c.copy_threshold
    assert (c.copy_pairs, c.near_duplicate_pairs, c.wrong_pairs) == (20, 20, 5)
    assert any("only 20 pairs score at or above the copy threshold" in w for w in c.warnings)
    assert any("at least 300" in w for w in c.warnings)  # 99 %: the rule of three
    assert any("only 5 wrong pairs" in w for w in c.warnings)
    assert any("near-duplicate threshold equals the copy threshold" in w for w in c.warnings)
    assert (least_pairs(0.99), least_pairs(0.95), least_pairs(1.0)) == (300, 60, 3000)


def test_a_calibration_on_enough_pairs_has_no_warning():
    rng = np.random.default_rng(1)
    preds = [(float(s), True) for s in rng.uniform(0.5, 1.0, 600)]
    preds += [(float(s), False) for s in rng.uniform(0.0, 0.7, 600)]
    c = calibrate(preds, 600)
    assert c is not None and c.warnings == ()
    assert c.near_duplicate_threshold < c.copy_threshold and c.copy_pairs >= 300


@pytest.fixture
def tiny_db(tmp_path, catalog_dir):
    db = tmp_path / "tiny.db"
    result = CliRunner().invoke(cli, ["--db", str(db), "-q", "catalog", "add", str(catalog_dir)])
    assert result.exit_code == 0, result.output
    return db


def _store(db, settings):
    return Store.open(db, hasher=HASHER_ID, embedder=embedder_id(settings), create=False)


def test_query_set_attacks_the_sample_and_hides_the_held_out(tiny_db, tmp_path, settings, models):
    with _store(tiny_db, settings) as store:
        qs = build_queries(
            store, settings, tmp_path / "q", sample=3, held_out=2, families=("flip", "border"), seed=4
        )
        assert len(qs.queries) == 10 and len(qs.held_out) == 2 and not qs.skipped
        copies = [q for q in qs.queries if q.catalog_id is not None]
        assert len(copies) == 6 and {q.family for q in copies} == {"flip", "border"}
        assert not {q.catalog_id for q in copies} & qs.held_out
        assert all((tmp_path / "q").joinpath(q.path.rsplit("/", 1)[1]).is_file() for q in qs.queries)
        # the same seed gives the same query set
        again = build_queries(
            store, settings, tmp_path / "r", sample=3, held_out=2, families=("flip",), seed=4
        )
        assert [q.catalog_id for q in again.queries] == [
            q.catalog_id for q in qs.queries if q.family == "flip"
        ]
        # a held-out image is invisible: its exact file finds nothing, while it is found without exclusion
        hidden = next(iter(qs.held_out))
        path = store.catalog.entries([hidden])[hidden].path
        (found,) = Scanner(store, models, settings).scan([path])
        (blind,) = Scanner(store, models, settings, exclude=qs.held_out).scan([path])
        assert found.matches[0].catalog_id == hidden
        assert all(m.catalog_id != hidden for m in blind.matches)


def test_catalog_image_that_vanished_is_skipped_not_fatal(tiny_db, tmp_path, settings, catalog_dir):
    with _store(tiny_db, settings) as store:
        first = next(store.catalog.list())
        store.conn.execute("UPDATE catalog SET path = ? WHERE id = ?", (str(tmp_path / "gone.png"), first.id))
        qs = build_queries(store, settings, tmp_path / "q", sample=7, held_out=0, families=("flip",))
        assert len(qs.skipped) == 1 and "gone.png" in qs.skipped[0]
        assert len(qs.queries) == 6


def test_evaluate_end_to_end_calibrates_and_scan_obeys(tiny_db, tmp_path, catalog_dir):
    runner = CliRunner()
    args = ["--db", str(tiny_db), "-q", "evaluate", "--sample", "4", "--held-out", "3",
            "--families", "flip,border,jpeg", "--mode", "both", "--format", "json", "--calibrate",
            "--keep", str(tmp_path / "kept")]  # fmt: skip
    result = runner.invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    fast, thorough = out["evaluations"]
    assert (fast["mode"], thorough["mode"]) == ("fast", "thorough")
    assert fast["copies"] == 12 and fast["distractors"] == 9 and fast["errors"] == 0
    assert [f["family"] for f in fast["families"]] == ["flip", "border", "jpeg"]
    assert thorough["cnn_share_distractors"] == 1.0
    assert 0 <= fast["cnn_share_distractors"] <= 1 and fast["cnn_share_copies"] > 0.5
    # the fixtures are seven unlike pictures: every attacked copy is found at full precision
    assert thorough["micro_ap"] > 0.9 and thorough["recall_at_99"] > 0.9
    assert len(list((tmp_path / "kept").glob("*.jpg"))) == 21
    cal = out["calibration"]
    with Store.open(tiny_db, hasher=HASHER_ID, embedder=embedder_id_default(), create=False) as store:
        stored = store.saved_settings.read()
    assert float(stored["copy_threshold"]) == pytest.approx(cal["copy_threshold"])
    # scan takes the stored thresholds as defaults; --set still wins
    copy = tmp_path / "copy.png"
    shutil.copy(catalog_dir / sorted(p.name for p in catalog_dir.iterdir())[0], copy)
    with Store.open(tiny_db, hasher=HASHER_ID, embedder=embedder_id_default(), create=False) as store:
        store.saved_settings.save({"copy_threshold": 1.01, "near_duplicate_threshold": 1.01})
    record = json.loads(runner.invoke(cli, ["--db", str(tiny_db), "check", str(copy), "--format", "jsonl",
                                            "--min-score", "0"]).stdout)  # fmt: skip
    assert record["matches"][0]["verdict"] == "none"
    wins = ["--set", "copy_threshold=0.5", "--set", "near_duplicate_threshold=0.4"]
    result = runner.invoke(cli, ["--db", str(tiny_db), *wins, "check", str(copy), "--format", "jsonl"])
    assert result.exit_code == 0 and json.loads(result.stdout)["matches"][0]["verdict"] == "copy"


def test_settings_show_calibrated_thresholds_as_stored_with_the_calibrations_warning(tiny_db):
    runner = CliRunner()
    args = ["--db", str(tiny_db), "-q", "evaluate", "--sample", "4", "--held-out", "3", "--families",
            "flip,border,jpeg", "--mode", "fast", "--format", "json", "--calibrate"]  # fmt: skip
    result = runner.invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    cal = json.loads(result.stdout)["calibration"]
    assert cal["warnings"] and cal["copy_pairs"] == 12 == cal["near_duplicate_pairs"]
    # twelve copies cannot show 99 % precision: said even under -q, and stored with the values
    assert "warning: unreliable calibration: only 12 pairs" in result.stderr
    shown = runner.invoke(cli, ["--db", str(tiny_db), "settings", "--format", "json"])
    assert shown.exit_code == 0, shown.output
    rows = {r["name"]: r for r in json.loads(shown.stdout)}
    for name in ("copy_threshold", "near_duplicate_threshold"):
        assert rows[name]["source"] == "stored"
        assert rows[name]["value"] == pytest.approx(cal[name])
        assert "only 12 pairs" in rows[name]["note"]
    assert rows["top_k"]["source"] == "default" and rows["top_k"]["note"] is None
    assert "unreliable calibration: only 12 pairs" in shown.stderr
    table = runner.invoke(cli, ["--db", str(tiny_db), "settings"]).stdout.splitlines()
    line = next(x for x in table if x.startswith("copy_threshold "))
    assert line.split()[1:3] == [str(cal["copy_threshold"]), "stored"]
    # --set wins over both stored values: the calibration's warning no longer applies
    wins = ["--set", "copy_threshold=0.9", "--set", "near_duplicate_threshold=0.8"]
    shown = runner.invoke(cli, ["--db", str(tiny_db), *wins, "settings", "--format", "jsonl"])
    rows = {r["name"]: r for r in map(json.loads, shown.stdout.splitlines())}
    assert (rows["copy_threshold"]["source"], rows["copy_threshold"]["value"]) == ("set", 0.9)
    assert rows["copy_threshold"]["note"] is None and "warning" not in shown.stderr


def embedder_id_default() -> str:
    from detector.config import Settings

    return embedder_id(Settings())


def test_evaluate_refuses_bad_requests(tiny_db):
    runner = CliRunner()
    result = runner.invoke(cli, ["--db", str(tiny_db), "evaluate", "--families", "flip,warp"])
    assert result.exit_code != 0 and "warp" in result.output
    result = runner.invoke(cli, ["--db", str(tiny_db), "evaluate", "--sample", "5", "--held-out", "5"])
    assert result.exit_code != 0 and "exceed" in result.output


def test_catalog_stores_centre_crops_so_fast_mode_finds_a_cropped_copy(tiny_db, tmp_path, catalog_dir):
    import sqlite3

    from PIL import Image

    conn = sqlite3.connect(tiny_db)
    variants = [v for (v,) in conn.execute("SELECT variant FROM codes")]
    conn.close()
    assert variants.count("centre80") == variants.count("centre65") == 7
    source = (
        catalog_dir / "coffee.png"
        if (catalog_dir / "coffee.png").exists()
        else sorted(catalog_dir.iterdir())[1]
    )
    with Image.open(source) as im:
        w, h = im.size
        crop = im.convert("RGB").crop((round(w * 0.16), round(h * 0.19), round(w * 0.83), round(h * 0.84)))
    crop.save(tmp_path / "crop.jpg", quality=85)
    args = ["--db", str(tiny_db), "check", str(tmp_path / "crop.jpg"), "--mode", "fast", "--format", "jsonl"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    best = json.loads(result.stdout)["matches"][0]
    assert best["catalog_path"].endswith(source.name) and best["verdict"] != "none"


def test_evaluate_shows_collages_of_the_hidden_images_and_finds_the_copies(tiny_db):
    args = ["--db", str(tiny_db), "-q", "evaluate", "--sample", "4", "--held-out", "3", "--families",
            "collage", "--mode", "thorough", "--format", "json"]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (thorough,) = json.loads(result.stdout)["evaluations"]
    (collage,) = thorough["families"]
    assert collage["family"] == "collage" and collage["copies"] == 4
    # these fixtures are hard cells (black gutters beside black space, a white gutter beside a
    # white sky): found where the layout shows, and no collage of hidden images is accused
    assert collage["recall_at_99"] >= 0.25 and thorough["flagged_distractors"] == 0


def test_evaluate_without_a_browser_leaves_the_page_family_out_or_says_why(tiny_db, monkeypatch):
    monkeypatch.setenv("COPYSCAN_CHROMIUM", "/nonexistent/chromium")
    runner = CliRunner()
    asked = runner.invoke(cli, ["--db", str(tiny_db), "evaluate", "--families", "flip,page"])
    assert asked.exit_code == 2 and "headless Chromium" in asked.output
    # all families by default: the page family is left out, with a note, and the run goes on
    args = ["--db", str(tiny_db), "evaluate", "--sample", "1", "--held-out", "1", "--mode", "fast",
            "--format", "json"]  # fmt: skip
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "no headless Chromium found; the page family is left out" in result.stderr
    (fast,) = json.loads(result.stdout)["evaluations"]
    families = {f["family"] for f in fast["families"]}
    assert "page" not in families and {"collage", "flip", "mirror-crop"} <= families


def test_families_added_later_attack_the_same_images_as_before(tiny_db, tmp_path, settings):
    with _store(tiny_db, settings) as store:
        first = build_queries(
            store, settings, tmp_path / "q", sample=3, held_out=2, families=("flip",), seed=4
        )
        copied = [q.catalog_id for q in first.queries if q.catalog_id is not None]
        ids = [*copied, *sorted(first.held_out)]
        # another seed would draw other images: the given ids decide
        later = build_queries(
            store, settings, tmp_path / "r", sample=3, held_out=2, families=("collage",), seed=99,
            chosen_ids=ids,
        )  # fmt: skip
    assert [q.catalog_id for q in later.queries if q.catalog_id is not None] == copied
    assert later.held_out == first.held_out


def test_a_page_chromium_fails_to_render_is_that_images_skip_not_the_runs_end(
    tiny_db, tmp_path, settings, monkeypatch
):
    from detector.tasks import pages

    def broken(*_args: object) -> None:
        raise pages.RenderFailed("headless Chromium (chromium) wrote no screenshot")

    monkeypatch.setattr(pages, "find_browser", lambda: "chromium")
    monkeypatch.setattr(pages, "_render", broken)
    with _store(tiny_db, settings) as store:
        qs = build_queries(
            store, settings, tmp_path / "q", sample=2, held_out=1, families=("flip", "page"), seed=4
        )
    assert [q.family for q in qs.queries] == ["flip"] * 3
    assert len(qs.skipped) == 3 and all(": page: headless Chromium" in s for s in qs.skipped)

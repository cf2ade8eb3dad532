"""The public Python API: ``import detector`` and the README's "From Python" example, run as
written on the shipped fixtures."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import detector
from detector.config import Settings

from .conftest import ROOT


def _readme_python() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## From Python") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


def test_the_readme_example_runs_as_written(tmp_path):
    (tmp_path / "fixtures").symlink_to(ROOT / "fixtures")
    script = tmp_path / "example.py"
    script.write_text(_readme_python())
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "7 catalog images"
    copies = [line for line in lines if ": copy of " in line]
    assert len(copies) == 49  # every attacked copy of the shipped crawl
    assert "upload flagged: True" in lines
    assert lines[-1] == "49 flagged pairs, owner Demo Rights Ltd"


def test_the_package_exports_the_api_lazily():
    assert set(detector.__all__) >= {"open_catalog", "Catalog", "ScanResult", "Match", "Settings"}
    assert detector.Settings is Settings
    with pytest.raises(AttributeError):
        _ = detector.no_such_name


def test_a_library_scan_uses_the_thresholds_calibration_saved(tmp_path, catalog_dir, crawl_dir):
    """A saved copy threshold (as evaluate --calibrate stores it) rules a library scan, as it
    rules the command line's; a threshold the caller sets beats it."""
    db = tmp_path / "c.db"
    crop = crawl_dir / "chelsea-crop.jpg"
    with detector.open_catalog(db, create=True) as catalog:
        catalog.add([catalog_dir])
        (plain,) = catalog.scan([crop])
        assert plain.matches[0].verdict == "copy"
        catalog.store.saved_settings.save({"copy_threshold": 0.999, "near_duplicate_threshold": 0.998})
        assert catalog.effective.sources["copy_threshold"] == "stored"
        (strict,) = catalog.scan([crop], rescan=True)
        assert strict.matches == () or strict.matches[0].verdict == "none"
        assert catalog.check(crop).flagged is False
    with detector.open_catalog(
        db, settings={"copy_threshold": 0.5, "near_duplicate_threshold": 0.4}
    ) as catalog:
        assert catalog.effective.sources["copy_threshold"] == "set"
        assert catalog.check(crop).matches[0].verdict == "copy"
        assert [r.status for r in catalog.runs()] == ["finished", "finished"]


def test_check_bytes_gives_what_check_gives(tmp_path, catalog_dir, crawl_dir):
    with detector.open_catalog(tmp_path / "c.db", create=True) as catalog:
        catalog.add([catalog_dir])
        path = crawl_dir / "chelsea-crop.jpg"
        by_path = catalog.check(path)
        by_bytes = catalog.check_bytes(path.read_bytes(), name=str(path))
        assert by_bytes.matches == by_path.matches and by_bytes.flagged
        bad = catalog.check_bytes(b"not an image", name="x.jpg")
        assert bad.status == "error" and "UnsupportedFormat" in (bad.error or "")


def test_stopping_a_library_scan_early_leaves_an_interrupted_run_that_resumes(
    tmp_path, catalog_dir, crawl_dir
):
    with detector.open_catalog(tmp_path / "c.db", create=True, settings={"batch_size": 8}) as catalog:
        catalog.add([catalog_dir])
        scan = catalog.scan([crawl_dir])
        first = [next(scan) for _ in range(8)]
        scan.close()
        (run,) = catalog.runs()
        assert run.status == "interrupted" and run.items == 8
        rest = list(catalog.resume())
        files = {str(p) for p in Path(crawl_dir).iterdir()}
        # the batch being handed out when the caller stopped comes again first
        assert {r.query for r in first} | {r.query for r in rest} == files
        assert len(files) - len(first) <= len(rest) <= len(files)
        assert catalog.runs()[0].status == "finished"

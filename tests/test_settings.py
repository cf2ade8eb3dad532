"""The one settings table: kinds and ranges checked wherever a value comes from, the settings
in force with their sources, and the scan-state fingerprint that every setting is part of."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math

import pytest
from click.testing import CliRunner

from cli.main import cli
from detector.config import (
    DEFAULT,
    SET,
    STORED,
    Settings,
    effective_settings,
    parse_setting,
    setting_range,
    settings_table,
)
from detector.errors import SettingError
from detector.scan.state import engine_revision, scan_state


def test_every_setting_has_help_and_every_number_a_range():
    for name, default, help_text in settings_table():
        assert help_text, name
        if not isinstance(default, bool):
            assert setting_range(name) is not None, name


@pytest.mark.parametrize(
    "change",
    [
        {"batch_size": 0},
        {"batch_size": -1},
        {"top_k": 0},
        {"max_candidates": -1},
        {"radius_sum": -1},
        {"hamming_ceiling": 0},
        {"cosine_floor": 1.0},
        {"cnn_weight": math.nan},
        {"geo_weight": math.inf},
        {"copy_threshold": math.nan},
        {"verify_side": 10},
        {"blur_factors": ()},
        {"blur_factors": (1, 3)},
        {"jobs": 2.5},
        {"trim": 1},
        {"inliers_floor": 30, "inliers_full": 30},
    ],
)
def test_values_out_of_range_or_of_the_wrong_kind_are_refused(change):
    with pytest.raises(SettingError):
        Settings().replace(**change)


def test_text_is_parsed_like_each_default():
    assert parse_setting("blur_factors", "2, 4") == (2, 4)
    assert parse_setting("verify", "off") is False
    assert parse_setting("min_score", "none") is None
    assert parse_setting("geo_weight", "0.3") == 0.3
    with pytest.raises(ValueError):
        parse_setting("batch_size", "1.5")
    with pytest.raises(KeyError):
        parse_setting("nope", "1")


def test_settings_in_force_come_from_defaults_then_saved_then_set():
    saved = {"copy_threshold": "0.6", "batch_size": "-1", "no_such": "1", "top_k": "x"}
    found = effective_settings(saved, {"top_k": 3}, {"jobs": 0})
    s = found.settings
    assert (s.copy_threshold, s.top_k, s.jobs, s.batch_size) == (0.6, 3, 0, Settings().batch_size)
    assert found.sources["copy_threshold"] == STORED and found.sources["top_k"] == SET
    assert found.sources["batch_size"] == DEFAULT  # a saved value out of range is left out...
    assert any("batch_size" in note for note in found.ignored)  # ...and said so
    assert any("no_such" in note for note in found.ignored)
    with pytest.raises(SettingError):
        effective_settings({}, {"batch_size": 0})


@pytest.mark.parametrize("pair", ["batch_size=0", "cnn_weight=nan", "top_k=0", "hamming_ceiling=0"])
def test_the_command_line_refuses_a_bad_set_as_bad_usage(pair, tmp_path):
    result = CliRunner().invoke(cli, ["--db", str(tmp_path / "x.db"), "--set", pair, "runs"])
    assert result.exit_code == 2 and "--set" in result.output
    assert not (tmp_path / "x.db").exists()


def test_settings_lists_the_values_in_effect_with_their_source(tmp_path):
    db = tmp_path / "none.db"
    args = ["--db", str(db), "--set", "copy_threshold=0.7", "--set", "blur_factors=2,4", "settings"]
    result = CliRunner().invoke(cli, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert list(rows) == [name for name, _, _ in settings_table()]
    assert (rows["copy_threshold"]["value"], rows["copy_threshold"]["source"]) == (0.7, SET)
    assert (rows["blur_factors"]["value"], rows["blur_factors"]["source"]) == ([2, 4], SET)
    assert (rows["top_k"]["value"], rows["top_k"]["source"]) == (5, DEFAULT)
    assert rows["jobs"]["value"] == 0  # the command line's default: worker processes
    assert rows["top_k"]["help"] and not db.exists()  # no database: defaults; none is made
    table = CliRunner().invoke(cli, args).stdout.splitlines()
    assert table[0].split() == ["NAME", "VALUE", "SOURCE", "HELP"]
    assert next(x for x in table if x.startswith("copy_threshold ")).split()[1:3] == ["0.7", SET]
    assert next(x for x in table if x.startswith("blur_factors ")).split()[1:3] == ["2,4", SET]


def test_settings_reads_values_stored_in_the_database(tmp_path):
    from detector.stage1.hashing import HASHER_ID
    from detector.stage2.embedding import embedder_id
    from detector.storage.store import Store

    db = tmp_path / "s.db"
    with Store.open(db, hasher=HASHER_ID, embedder=embedder_id(Settings()), create=True) as store:
        store.saved_settings.save({"copy_threshold": 0.6073, "near_duplicate_threshold": 0.5})
    result = CliRunner().invoke(cli, ["--db", str(db), "--set", "near_duplicate_threshold=0.4", "settings",
                                      "--format", "csv"])  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in csv.DictReader(io.StringIO(result.stdout))}
    assert (rows["copy_threshold"]["value"], rows["copy_threshold"]["source"]) == ("0.6073", STORED)
    assert (rows["near_duplicate_threshold"]["value"], rows["near_duplicate_threshold"]["source"]) == (
        "0.4",
        SET,
    )
    assert rows["copy_threshold"]["note"] == "" and "warning" not in result.stderr  # saved without notes


def _valid(base: Settings, name: str, value: object) -> bool:
    try:
        base.replace(**{name: value})
    except SettingError:
        return False
    return True


def test_the_scan_state_changes_with_every_setting_but_those_that_share_out_the_work():
    base = Settings()
    state = scan_state(base, "fast", 1, (), "h", "e")
    for f in dataclasses.fields(Settings):
        value = getattr(base, f.name)
        if isinstance(value, bool):
            changed = not value
        elif isinstance(value, tuple):
            changed = (*value, 5)
        elif value is None:
            changed = 0.5
        else:
            step = 1 if isinstance(value, int) else 0.01
            changed = value + step if _valid(base, f.name, value + step) else value - step
        other = scan_state(base.replace(**{f.name: changed}), "fast", 1, (), "h", "e")
        assert (other == state) == (f.name in ("batch_size", "jobs", "verify_threads", "cnn_threads")), f.name
    assert scan_state(base, "thorough", 1, (), "h", "e") != state
    assert scan_state(base, "fast", 2, (), "h", "e") != state
    assert len(engine_revision()) == 16 and engine_revision() == engine_revision()

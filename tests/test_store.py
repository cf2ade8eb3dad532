"""Storage: schema and migrations, identity checks, WAL, codes round trip in bulk."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from detector.errors import IncompatibleDatabase, NotFound, SchemaTooNew, StoreError
from detector.records import Match, ScanResult
from detector.stage1.hashing import to_sqlite
from detector.storage.catalog import NewCatalogImage
from detector.storage.schema import SCHEMA_VERSION
from detector.storage.store import Store


def _open(path, hasher="h1", embedder="e1", create=True):
    return Store.open(path, hasher=hasher, embedder=embedder, create=create)


def _image(i: int, phash: int, owner: str | None = "acme") -> NewCatalogImage:
    return NewCatalogImage(
        path=f"/cat/{i}.jpg",
        owner=owner,
        sha256=f"{i:064x}",
        width=10 + i,
        height=20,
        phash=to_sqlite(phash),
        dhash=to_sqlite(phash ^ 0xFF),
        embedding=bytes([i]) * 2560,
    )


def test_new_database_is_wal_versioned_and_names_its_identities(tmp_path):
    db = tmp_path / "c.db"
    with _open(db) as store:
        assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert dict(store.conn.execute("SELECT key, value FROM meta")) == {
            "hasher": "h1",
            "embedder": "e1",
            "catalog_generation": "0",
        }
        assert {"catalog", "runs", "items", "matches", "meta"} <= set(store.db.table_names())


def test_other_hasher_or_embedder_is_refused(tmp_path):
    db = tmp_path / "c.db"
    _open(db).close()
    with pytest.raises(IncompatibleDatabase, match="hasher 'h1'"):
        _open(db, hasher="h2")
    with pytest.raises(IncompatibleDatabase, match="embedder 'e1'"):
        _open(db, embedder="e2")
    _open(db).close()  # the refusal changed nothing


def test_newer_schema_is_refused_and_missing_file_without_create(tmp_path):
    db = tmp_path / "c.db"
    _open(db).close()
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaTooNew):
        _open(db)
    with pytest.raises(NotFound):
        _open(tmp_path / "absent.db", create=False)
    assert not (tmp_path / "absent.db").exists()


def test_not_a_database_is_a_clear_error(tmp_path):
    bogus = tmp_path / "bogus.db"
    bogus.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable copyscan database"):
        _open(bogus)


def test_codes_round_trip_in_bulk_including_the_top_bit(tmp_path):
    codes = [0, 1, 2**63, 2**64 - 1, 0xC2924C5532BDDFC8]
    with _open(tmp_path / "c.db") as store:
        ids = store.catalog.add([_image(i, c) for i, c in enumerate(codes)])
        got_ids, phash, dhash = store.catalog.codes()
        assert list(got_ids) == ids
        assert phash.dtype == np.uint64 and [int(p) for p in phash] == codes
        assert [int(d) for d in dhash] == [c ^ 0xFF for c in codes]
        entries = store.catalog.entries(ids)
        assert entries[ids[3]].phash == 2**64 - 1


def test_codes_load_in_chunks_in_id_order_own_code_first(tmp_path, monkeypatch):
    import dataclasses

    import detector.storage.store

    monkeypatch.setattr(detector.storage.catalog, "_LOAD_ROWS", 3)  # many chunks
    with _open(tmp_path / "c.db") as store:
        images = [
            dataclasses.replace(_image(i, 100 + i), variants=(("a", 200 + i, 0), ("b", 300 + i, 0)))
            for i in range(5)
        ]
        ids = store.catalog.add(images)
        got_ids, phash, _ = store.catalog.codes()
        assert got_ids.tolist() == [i for i in ids for _ in range(3)]
        assert phash.tolist() == [c + i for i in range(5) for c in (100, 200, 300)]


def test_same_content_is_stored_once(tmp_path):
    with _open(tmp_path / "c.db") as store:
        first = store.catalog.add([_image(1, 5)])
        again = store.catalog.add([_image(1, 5), _image(2, 6)])
        assert again[0] == first[0]
        assert store.stats().images == 2
        assert store.catalog.known([f"{1:064x}", "nope"]) == {f"{1:064x}": first[0]}


def test_remove_by_id_path_and_owner(tmp_path):
    with _open(tmp_path / "c.db") as store:
        ids = store.catalog.add(
            [_image(1, 1), _image(2, 2), _image(3, 3, owner="other"), _image(4, 4, owner="other")]
        )
        assert store.catalog.remove(ids=[ids[0]]) == 1
        assert store.catalog.remove(paths=["/cat/2.jpg"]) == 1
        assert store.catalog.remove(owner="other") == 2
        assert store.stats().images == 0
        assert store.catalog.remove(ids=[999]) == 0


def test_failed_write_rolls_back(tmp_path):
    with _open(tmp_path / "c.db") as store:
        with pytest.raises(RuntimeError), store.write():
            store.conn.execute("INSERT INTO meta (key, value) VALUES ('x', 'y')")
            raise RuntimeError("boom")
        assert store.conn.execute("SELECT count(*) FROM meta WHERE key = 'x'").fetchone()[0] == 0


def _item(path, sha, status, error, phash, dhash, matches) -> ScanResult:
    return ScanResult(path, status, error, matches, sha, phash, dhash)


def test_runs_items_and_matches_are_recorded(tmp_path):
    with _open(tmp_path / "c.db") as store:
        (cid,) = store.catalog.add([_image(1, 1)])
        copy = Match(
            cid,
            "/cat/1.jpg",
            "Ann",
            3,
            0.9,
            0.8,
            "copy",
            "hflip",
            40,
            ((0.1, 0.2), (0.9, 0.2), (0.5, 0.8)),
            None,
        )
        run = store.history.start("scan", {"paths": ["a"]}, "fast", "state-1")
        store.history.record(
            run,
            [
                _item("a.jpg", "s1", "ok", None, 1, 2, (copy,)),
                _item("b.jpg", None, "error", "CorruptImage: x", None, None, ()),
                _item(
                    "c.jpg",
                    "s3",
                    "ok",
                    None,
                    5,
                    6,
                    (Match(cid, "/cat/1.jpg", None, 9, 0.5, 0.2, "none"),),
                ),
            ],
        )
        assert store.history.run(run).status == "running" and store.history.run().id == run
        store.history.finish(run)
        row = store.conn.execute("SELECT items, errors, matched, finished_at, status FROM runs").fetchone()
        assert row[:3] == (3, 1, 1) and row[3] and row[4] == "finished"
        assert store.stats().runs == 1
        a = store.history.item(store.history.reusable_items(["s1"], "state-1")["s1"])
        assert a.matches == (copy,) and a.phash == 1  # regions survive the JSON round trip
        assert store.history.reusable_items(["s1", "s3", "zz"], "other state") == {}
        assert set(store.history.reusable_items(["s1", "s3", "zz"], "state-1")) == {"s1", "s3"}


def test_report_marks_pairs_no_earlier_run_flagged_as_new(tmp_path):
    with _open(tmp_path / "c.db") as store:
        c1, c2 = store.catalog.add([_image(1, 1), _image(2, 2)])

        def flagged(cid: int, score: float) -> Match:
            return Match(cid, f"/cat/{cid}.jpg", "Owner", 2, 0.9, score, "copy")

        first = store.history.start("scan", {}, "fast", "s")
        store.history.record(first, [_item("x.jpg", "sx", "ok", None, 1, 1, (flagged(c1, 0.9),))])
        store.history.finish(first)
        second = store.history.start("scan", {}, "fast", "s")
        store.history.record(
            second,
            [
                _item("renamed-x.jpg", "sx", "ok", None, 1, 1, (flagged(c1, 0.9), flagged(c2, 0.6))),
                _item("y.jpg", "sy", "ok", None, 1, 1, (flagged(c1, 0.95),)),
            ],
        )
        store.history.finish(second)
        report = store.reports.load()
        assert report.run.id == second and report.previous_run == first
        assert [(r.query_path, r.match.catalog_id, r.new) for r in report.rows] == [
            ("y.jpg", c1, True),
            ("renamed-x.jpg", c1, False),  # same content, same catalog image: seen before
            ("renamed-x.jpg", c2, True),
        ]
        assert [r.query_path for r in store.reports.load(second, new_only=True).rows] == [
            "y.jpg",
            "renamed-x.jpg",
        ]
        assert [r.new for r in store.reports.load(first).rows] == [True]


def test_catalog_generation_changes_with_every_add_and_remove(tmp_path):
    with _open(tmp_path / "c.db") as store:
        g0 = store.catalog.generation()
        (cid,) = store.catalog.add([_image(1, 1)])
        g1 = store.catalog.generation()
        store.catalog.add([_image(1, 1)])  # known content: nothing changes
        assert store.catalog.generation() == g1 > g0
        store.catalog.remove(ids=[cid])
        assert store.catalog.generation() > g1


def test_runs_left_running_are_marked_killed_and_can_be_reopened(tmp_path):
    with _open(tmp_path / "c.db") as store:
        run = store.history.start("scan", {"paths": ["a"]})
        store.history.record(run, [_item("a.jpg", "s1", "ok", None, 1, 2, ())])
        assert store.history.mark_killed() == [run] and store.history.run(run).status == "killed"
        assert store.history.scanned_paths(run) == {"a.jpg"}
        store.history.reopen(run)
        assert store.history.run(run).status == "running"
        store.history.finish(run, "interrupted")
        assert store.history.run(run).status == "interrupted" and store.history.runs()[0].items == 1


def test_variant_codes_are_loaded_with_their_image_and_removed_with_it(tmp_path):
    with _open(tmp_path / "c.db") as store:
        im = _image(1, 0xABCD)
        with_variant = NewCatalogImage(**{**im.__dict__, "variants": (("trim", to_sqlite(2**63 + 5), 7),)})
        (cid,) = store.catalog.add([with_variant])
        (other,) = store.catalog.add([_image(2, 0x1234)])
        ids, phash, _ = store.catalog.codes()
        assert ids.tolist() == [cid, cid, other]
        assert sorted(phash[:2].tolist()) == [0xABCD, 2**63 + 5]
        assert store.catalog.add([with_variant]) == [cid]  # same content: no second variant
        assert len(store.catalog.codes()[0]) == 3
        store.catalog.remove(ids=[cid])
        assert store.catalog.codes()[0].tolist() == [other]
        assert store.conn.execute("SELECT count(*) FROM codes").fetchone()[0] == 0


def test_version_1_database_upgrades_in_place_and_keeps_its_catalog(tmp_path):
    from detector.storage.schema import MIGRATIONS

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    import sqlite_utils

    MIGRATIONS[0](sqlite_utils.Database(conn))
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO meta VALUES ('hasher', 'h1'), ('embedder', 'e1')")
    conn.execute(
        "INSERT INTO catalog (sha256, path, width, height, phash, dhash, embedding, added_at)"
        " VALUES ('ab', '/old.jpg', 5, 5, -1, 3, x'00', 'then')"
    )
    conn.close()
    with _open(path) as store:
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 9
        ids, phash, _ = store.catalog.codes()
        plan = store.conn.execute("EXPLAIN QUERY PLAN SELECT id, phash, dhash FROM catalog").fetchall()
        assert "COVERING INDEX catalog_codes" in plan[0][-1]  # the descriptors are not read
        assert phash.tolist() == [2**64 - 1] and len(ids) == 1
        assert {"codes", "settings", "checks", "rehash_codes"} <= set(store.db.table_names())
        (entry,) = store.catalog.list()
        assert entry.path == "/old.jpg" and store.catalog.generation() == 0


def test_checks_wait_for_a_decision_and_external_ids_remove_images(tmp_path):
    from detector.storage.checks import NewCheck

    with _open(tmp_path / "c.db") as store:
        im = _image(1, 1)
        (cid,) = store.catalog.add([NewCatalogImage(**{**im.__dict__, "external_id": "L-1"})])
        assert store.catalog.external_ids([cid]) == {cid: "L-1"}
        flagged = store.checks.record(NewCheck("s1", "up.jpg", "/u/s1", "ok", None, "copy", {"matches": [1]}))
        clean = store.checks.record(NewCheck("s2", None, None, "ok", None, "none", {"matches": []}))
        assert [c.id for c in store.checks.recent()] == [flagged]
        assert [c.id for c in store.checks.recent(flagged_only=False)] == [clean, flagged]
        decided = store.checks.decide(flagged, "confirmed", "same photo")
        assert (decided.decision, decided.note, decided.result) == (
            "confirmed",
            "same photo",
            {"matches": [1]},
        )
        with pytest.raises(ValueError):
            store.checks.decide(flagged, "perhaps")
        with pytest.raises(NotFound):
            store.checks.decide(999, "dismissed")
        assert store.catalog.remove(external_ids=["nope"]) == 0
        assert store.catalog.remove(external_ids=["L-1"]) == 1 and store.stats().images == 0

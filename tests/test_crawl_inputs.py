"""Crawls as rights holders get them: img2dataset's webdataset tar shards and Parquet shards,
its ``files`` layout with JSON sidecars, and CSV / JSON Lines manifests. Each image is read
where it is (a tar member at its offset, a Parquet row, a manifest record), and what the
crawl said of it (``url``, ``page_url``, ...) reaches every record, report and output."""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
import sqlite3
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from detector.api import open_catalog
from detector.config import Settings
from detector.errors import DecompressionBomb, UnreadablePath
from detector.intake.inputs import FILE, JSONL, PARQUET, TAR, UNUSABLE, Input, InputReader, read_input
from detector.intake.manifests import record_at
from detector.intake.sources import expand_inputs

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CRAWL = sorted((FIXTURES / "crawl").glob("*-[bcj]*.jpg"))[:9]  # copies: blur, border, bright, crop, jpeg


def url(p: Path) -> str:
    return f"https://cdn.example.net/img/{p.name}"


def page(i: int) -> str:
    return f"https://shop.example.net/listing/{i}"


def run(*args: str, code: int = 0):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output + result.stderr
    return result


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def webdataset_shard(path: Path, images: list[Path] = CRAWL) -> Path:
    """A shard as img2dataset writes it: KEY.jpg, KEY.json, KEY.txt; one key whose download
    failed has only its JSON."""
    members: list[tuple[str, bytes]] = []
    for i, p in enumerate(images):
        key = f"{i:09d}"
        meta = {"url": url(p), "page_url": page(i), "key": key, "status": "success", "width": 160}
        members += [
            (f"{key}.jpg", p.read_bytes()),
            (f"{key}.json", json.dumps(meta).encode()),
            (f"{key}.txt", b"cap"),
        ]
        if i == 1:
            failed = {
                "url": "https://cdn.example.net/gone.jpg",
                "key": "failed",
                "status": "failed_to_download",
            }
            members.append(("failed.json", json.dumps(failed).encode()))
    return write_tar(path, members)


def parquet_shard(path: Path, images: list[Path] = CRAWL, row_group_size: int = 4) -> Path:
    """img2dataset's Parquet output: key, jpg, url, caption, status (a failed row has no jpg)."""
    rows = [
        {"key": f"{i:09d}", "jpg": p.read_bytes(), "url": url(p), "caption": f"c{i}", "status": "success"}
        for i, p in enumerate(images)
    ]
    rows.insert(
        2, {"key": "failed", "jpg": None, "url": "https://x/gone", "caption": None, "status": "failed"}
    )
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return path


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("crawl-inputs") / "c.db"
    run("--db", str(db), "-q", "catalog", "add", str(FIXTURES / "catalog"), "--owner", "Demo Rights")
    return db


def copy_db(indexed: Path, tmp_path: Path) -> Path:
    db = tmp_path / "c.db"
    shutil.copy(indexed, db)
    return db


# --- listing and reading inputs ------------------------------------------------------------


def test_a_webdataset_shard_gives_its_images_with_their_metadata_and_bytes(tmp_path: Path) -> None:
    shard = webdataset_shard(tmp_path / "00000.tar")
    inputs = expand_inputs([shard])
    assert [i.name for i in inputs] == [f"{shard}/{k:09d}.jpg" for k in range(len(CRAWL))]
    assert all(i.kind == TAR and i.source == str(shard) for i in inputs)
    first = inputs[0].metadata
    assert first["url"] == url(CRAWL[0]) and first["page_url"] == page(0) and first["caption"] == "cap"
    assert first["width"] == 160  # numbers stay numbers
    with InputReader(Settings()) as reader:
        assert [reader.read(i) for i in inputs] == [p.read_bytes() for p in CRAWL]


def test_a_damaged_tar_shard_keeps_the_images_before_the_damage_and_reports_it(tmp_path: Path) -> None:
    whole = webdataset_shard(tmp_path / "whole.tar").read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole[: len(whole) // 2] + b"\x01" * 700)  # a header that is not one
    inputs = expand_inputs([cut])
    assert inputs[-1].kind == UNUSABLE and "damaged" in inputs[-1].field
    assert len(inputs) > 2 and all(i.kind == TAR for i in inputs[:-1])
    compressed = tmp_path / "x.tar.gz"
    compressed.write_bytes(b"\x1f\x8b")
    (gz,) = expand_inputs([compressed])
    assert gz.kind == UNUSABLE and "decompress" in gz.field


def test_a_tar_member_over_the_size_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    shard = webdataset_shard(tmp_path / "s.tar", CRAWL[:1])
    (item,) = expand_inputs([shard])
    with pytest.raises(DecompressionBomb):
        read_input(item, Settings(max_file_bytes=item.size - 1))


def test_an_img2dataset_parquet_shard_gives_its_rows_and_skips_failed_downloads(tmp_path: Path) -> None:
    shard = parquet_shard(tmp_path / "00000.parquet")
    inputs = expand_inputs([shard])
    assert [i.name for i in inputs] == [f"{shard}/{k:09d}.jpg" for k in range(len(CRAWL))]
    assert all(i.kind == PARQUET and i.field == "jpg" for i in inputs)
    assert inputs[3].metadata == {
        "key": "000000003",
        "url": url(CRAWL[3]),
        "caption": "c3",
        "status": "success",
    }
    with InputReader(Settings()) as reader:  # across row groups, in and out of order
        assert [reader.read(i) for i in inputs[::-1]] == [p.read_bytes() for p in CRAWL[::-1]]


def test_a_parquet_shard_of_paths_names_files_relative_to_it(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    shutil.copy(CRAWL[0], tmp_path / "imgs" / "a.jpg")
    pq.write_table(
        pa.Table.from_pylist([{"path": "imgs/a.jpg", "url": "https://x/a"}]), tmp_path / "p.parquet"
    )
    (item,) = expand_inputs([tmp_path / "p.parquet"])
    assert item == Input(str(tmp_path / "imgs" / "a.jpg"), meta='{"url":"https://x/a"}')
    pq.write_table(pa.Table.from_pylist([{"title": "no images"}]), tmp_path / "meta.parquet")
    (bad,) = expand_inputs([tmp_path / "meta.parquet"])
    assert bad.kind == UNUSABLE and "no image column" in bad.field


def test_an_img2dataset_output_folder_is_read_shard_by_shard(tmp_path: Path) -> None:
    """webdataset output: 00000.tar beside its metadata-only 00000.parquet and stats JSON;
    files output: 00000/000000000.jpg beside 000000000.json."""
    out = tmp_path / "crawl"
    out.mkdir()
    webdataset_shard(out / "00000.tar", CRAWL[:3])
    pq.write_table(pa.Table.from_pylist([{"key": "000000000", "url": url(CRAWL[0])}]), out / "00000.parquet")
    (out / "00000_stats.json").write_text("{}")
    files = out / "00001"
    files.mkdir()
    shutil.copy(CRAWL[3], files / "000000000.jpg")
    (files / "000000000.json").write_text(json.dumps({"url": url(CRAWL[3]), "page_url": page(3)}))
    shutil.copy(CRAWL[4], files / "000000001.jpg")  # no sidecar: no metadata
    inputs = expand_inputs([out])
    assert [i.kind for i in inputs] == [TAR, TAR, TAR, FILE, FILE]
    assert inputs[3].metadata == {"url": url(CRAWL[3]), "page_url": page(3)}
    assert inputs[4].meta is None


def test_a_csv_manifest_names_files_or_carries_bytes_and_keeps_every_column(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    shutil.copy(CRAWL[0], tmp_path / "imgs" / "a.jpg")
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["Path", "bytes", "url", "page_url", "seen_at", "note"])
        w.writerow(["imgs/a.jpg", "", url(CRAWL[0]), page(0), "2026-11-30", 'two\nlines, "quoted"'])
        w.writerow(["", base64.b64encode(CRAWL[1].read_bytes()).decode(), url(CRAWL[1]), "", "", ""])
        w.writerow(["", "", "https://x/nothing", "", "", ""])
    inputs = expand_inputs([manifest])
    assert inputs[0] == Input(
        str(tmp_path / "imgs" / "a.jpg"),
        meta=json.dumps(
            {
                "url": url(CRAWL[0]),
                "page_url": page(0),
                "seen_at": "2026-11-30",
                "note": 'two\nlines, "quoted"',
            },
            separators=(",", ":"),
        ),
    )
    assert inputs[1].name == f"{manifest}#2" and inputs[1].kind == "csv"
    assert read_input(inputs[1], Settings()) == CRAWL[1].read_bytes()
    assert inputs[2].kind == UNUSABLE and "neither a path nor bytes" in inputs[2].field
    assert record_at(str(manifest), "csv", inputs[1].at)["url"] == url(CRAWL[1])


def test_a_jsonl_manifest_reports_a_bad_line_and_goes_on(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    lines = [
        json.dumps(
            {"key": "k1", "bytes": base64.b64encode(CRAWL[0].read_bytes()).decode(), "url": url(CRAWL[0])}
        ),
        "{not json",
        "",
        json.dumps({"key": "k2", "bytes": "!!not base64!!"}),
    ]
    manifest.write_text("\n".join(lines) + "\n")
    good, bad, undecodable = expand_inputs([manifest])
    assert (
        good.name == f"{manifest}/k1"
        and good.kind == JSONL
        and good.metadata == {"key": "k1", "url": url(CRAWL[0])}
    )
    assert read_input(good, Settings()) == CRAWL[0].read_bytes()
    assert bad.name == f"{manifest}#2" and bad.kind == UNUSABLE and "not JSON" in bad.field
    with pytest.raises(UnreadablePath, match="not base64"):
        read_input(undecodable, Settings())


# --- end to end: the URL in every output ---------------------------------------------------


def test_a_scan_of_shards_and_a_manifest_puts_the_url_in_every_output(indexed: Path, tmp_path: Path) -> None:
    db = copy_db(indexed, tmp_path)
    tar = webdataset_shard(tmp_path / "00000.tar", CRAWL[:4])
    shard = parquet_shard(tmp_path / "00001.parquet", CRAWL[4:7])
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"path": str(CRAWL[7]), "url": url(CRAWL[7]), "page_url": page(7)}) + "\n")
    expected = {p.name: url(p) for p in CRAWL[:8]}
    out = run(
        "--db", str(db), "scan", str(tar), str(shard), str(manifest), "--format", "jsonl",
        "--jsonl", str(tmp_path / "copy.jsonl"), "--parquet-out", str(tmp_path / "out.parquet"),
    )  # fmt: skip
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert sorted(r["meta"]["url"] for r in records) == sorted(expected.values())
    assert all(r["status"] == "ok" and r["matches"][0]["verdict"] == "copy" for r in records)
    assert records[0]["query"] == f"{tar}/000000000.jpg" and records[0]["meta"]["page_url"] == page(0)
    assert [json.loads(line) for line in (tmp_path / "copy.jsonl").read_text().splitlines()] == records
    table = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["url"] for r in table] == [r["meta"]["url"] for r in records]
    assert table[0]["page_url"] == page(0) and json.loads(table[0]["meta"])["caption"] == "cap"

    scan_csv = run("--db", str(db), "scan", str(tar), "--format", "csv").stdout
    rows = list(csv.DictReader(io.StringIO(scan_csv)))
    assert [r["url"] for r in rows if r["rank"] == "1"] == [url(p) for p in CRAWL[:4]]
    assert rows[0]["page_url"] == page(0) and rows[0]["run_id"] == "2"

    report_csv = run("--db", str(db), "report", "1", "--csv", "-").stdout
    report_rows = list(csv.DictReader(io.StringIO(report_csv)))
    assert list(report_rows[0]) == list(rows[0])  # one column set for scan and report CSV
    assert {r["url"] for r in report_rows} == set(expected.values())
    report = json.loads(run("--db", str(db), "report", "1", "--json", "-").stdout)
    assert {r["meta"]["url"] for r in report["rows"]} == set(expected.values())
    run("--db", str(db), "report", "1", "--html", str(tmp_path / "html"))
    page_html = (tmp_path / "html" / "index.html").read_text()
    assert f'href="{page(0)}"' in page_html and f'href="{url(CRAWL[5])}"' in page_html
    thumbs = {p.name for p in (tmp_path / "html" / "thumbs").iterdir()}
    assert len([t for t in thumbs if t.startswith("q-")]) == len(expected)  # read from the shards


def test_the_api_returns_the_crawls_metadata_and_resumes_a_shard_by_name(
    indexed: Path, tmp_path: Path
) -> None:
    db = copy_db(indexed, tmp_path)
    tar = webdataset_shard(tmp_path / "00000.tar")
    with open_catalog(db, settings={"batch_size": 2}) as catalog:
        results = catalog.scan([tar])
        first = [next(results) for _ in range(3)]
        results.close()  # the caller stops: the run is interrupted after its second batch
        rest = list(catalog.resume())
    # the batch being handed out when the caller stopped comes again first
    seen = {r.query: r for r in first + rest}
    names = list(seen)
    assert names == [f"{tar}/{k:09d}.jpg" for k in range(len(CRAWL))]
    assert [r.meta["url"] for r in seen.values()] == [url(p) for p in CRAWL]
    assert first[0].source is not None and first[0].source.kind == TAR
    conn = sqlite3.connect(db)
    stored = conn.execute("SELECT path, json_extract(metadata, '$.url') FROM items ORDER BY id").fetchall()
    conn.close()
    assert stored == list(zip(names, [url(p) for p in CRAWL], strict=True))


def test_unchanged_content_found_at_another_url_keeps_the_new_url(indexed: Path, tmp_path: Path) -> None:
    db = copy_db(indexed, tmp_path)
    first = tmp_path / "a.jsonl"
    first.write_text(json.dumps({"path": str(CRAWL[0]), "url": "https://old.example/x.jpg"}) + "\n")
    second = tmp_path / "b.jsonl"
    second.write_text(json.dumps({"path": str(CRAWL[0]), "url": "https://new.example/x.jpg"}) + "\n")
    run("--db", str(db), "-q", "scan", str(first))
    again = json.loads(run("--db", str(db), "scan", str(second), "--format", "jsonl").stdout)
    assert again["meta"]["url"] == "https://new.example/x.jpg"
    report = json.loads(run("--db", str(db), "report", "--json", "-").stdout)
    assert report["rows"][0]["meta"]["url"] == "https://new.example/x.jpg"

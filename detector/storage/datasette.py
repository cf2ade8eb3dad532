"""The database as Datasette shows it: a title, and a description of every table, view and
column (``copyscan datasette-metadata > metadata.json``, then ``datasette copyscan.db -m
metadata.json``). Codes are stored as signed 64-bit integers (SQLite has no unsigned type);
the ``*_hex`` views show them as the 16 hex digits ``catalog list`` prints."""

from __future__ import annotations

from typing import Any

_CODE = "as stored: the unsigned 64-bit code as a signed integer (the _hex view shows it in hex)"
_HEX = "the 64-bit code in hex, as `copyscan catalog list` prints it"

TABLES: dict[str, tuple[str, dict[str, str]]] = {
    "catalog": (
        "The catalog: the rights holders' images that scans look for.",
        {
            "id": "catalog id",
            "sha256": "sha256 of the image file's bytes",
            "path": "where the image file is (stage 3 reads it again)",
            "owner": "rights holder",
            "width": "width in pixels, upright",
            "height": "height in pixels, upright",
            "phash": f"pHash, {_CODE}",
            "dhash": f"dHash, {_CODE}",
            "embedding": "the CNN descriptor (1,280 float16 values)",
            "added_at": "when it was added (UTC)",
            "external_id": "the id a client gave it when adding it over HTTP",
        },
    ),
    "codes": (
        "Extra stage-1 codes of catalog images (content box, centre crops).",
        {
            "id": "code id",
            "catalog_id": "the catalog image",
            "variant": "which cut of the image: trim, centre80, centre65",
            "phash": f"pHash, {_CODE}",
            "dhash": f"dHash, {_CODE}",
        },
    ),
    "runs": (
        "Scan runs: what was asked, when, and how it ended.",
        {
            "id": "run id",
            "command": "scan",
            "args": "the request (paths, mode, options) as JSON",
            "started_at": "start (UTC)",
            "finished_at": "end (UTC); empty while running or when killed",
            "items": "images scanned",
            "errors": "images that could not be used",
            "matched": "images flagged as a copy or a near-duplicate",
            "status": "running, finished, interrupted or killed",
            "mode": "fast or thorough",
            "state": "fingerprint of the catalog, settings and copyscan the run scanned against",
            "reused": "images whose result was repeated from an earlier run (unchanged content)",
            "written": "items that reached every output (a resume writes the rest again)",
        },
    ),
    "items": (
        "Every image a run scanned, with its outcome and where it was found.",
        {
            "id": "item id",
            "run_id": "the run",
            "path": "the image: a file, or SHARD/MEMBER, SHARD#ROW, MANIFEST/KEY",
            "sha256": "sha256 of its bytes",
            "status": "ok or error",
            "error": "why it could not be used",
            "phash": f"pHash, {_CODE}",
            "dhash": f"dHash, {_CODE}",
            "scanned_at": "when it was recorded (UTC)",
            "reused_from": "the earlier item whose result this repeats",
            "metadata": "what the crawl said of it, as JSON: url, page_url, source, seen_at, ...",
            "locator": "where its bytes are when not a file of its own (tar offset, Parquet row), as JSON",
        },
    ),
    "matches": (
        "Each catalog image judged against a scanned image, with the evidence.",
        {
            "id": "match id",
            "item_id": "the scanned image",
            "catalog_id": "the catalog image; empty when it was removed from the catalog since",
            "catalog_path": "the catalog image's path when matched",
            "hamming": "stage 1: bits of 64 between the codes",
            "cosine": "stage 2: CNN descriptor cosine",
            "score": "0 to 1, rising with confidence",
            "verdict": "copy, near-duplicate or none",
            "owner": "the catalog image's owner when matched",
            "transform": "how the scanned image was turned or cut when stage 1 matched it",
            "inliers": "stage 3: RANSAC inliers",
            "query_region": "matched region in the scanned image, [[x, y], ...] fractions",
            "catalog_region": "matched region in the catalog image",
            "agreement": "share of the aligned overlap whose content agrees",
            "query_coverage": "the overlap's share of the scanned image",
            "catalog_coverage": "the overlap's share of the catalog image",
            "disagreement": "polygons where the scanned image differs",
        },
    ),
    "checks": (
        "Uploads checked by `copyscan serve`, and moderators' decisions.",
        {
            "id": "check id",
            "checked_at": "when (UTC)",
            "sha256": "sha256 of the upload",
            "name": "the file name the client gave",
            "upload_path": "where a flagged upload's bytes were kept",
            "status": "ok or error",
            "error": "why it could not be used",
            "verdict": "the best match's verdict",
            "result": "the check's JSON record",
            "decision": "confirmed or dismissed",
            "decided_at": "when the moderator decided (UTC)",
            "note": "the moderator's note",
            "metadata": "what the client said of the upload: url, page_url, uploader, listing_id",
        },
    ),
    "settings": (
        "Engine settings saved by `copyscan evaluate --calibrate`.",
        {"name": "setting", "value": "value", "set_at": "when it was saved (UTC)"},
    ),
    "meta": (
        "The database's identity: hasher, embedder, catalog generation.",
        {"key": "name", "value": "value"},
    ),
    "rehash_codes": (
        "Codes staged by `catalog rehash` (swapped in when it completes).",
        {
            "catalog_id": "the catalog image",
            "hasher": "the new hasher",
            "phash": f"pHash, {_CODE}",
            "dhash": f"dHash, {_CODE}",
            "variants": "the extra codes, as JSON",
        },
    ),
}

VIEWS: dict[str, tuple[str, dict[str, str]]] = {
    "catalog_hex": (
        "The catalog with its codes in hex.",
        {
            **{k: v for k, v in TABLES["catalog"][1].items() if k != "embedding"},
            "phash": f"pHash, {_HEX}",
            "dhash": f"dHash, {_HEX}",
        },
    ),
    "codes_hex": (
        "Extra codes of catalog images, in hex.",
        {**TABLES["codes"][1], "phash": f"pHash, {_HEX}", "dhash": f"dHash, {_HEX}"},
    ),
    "items_hex": (
        "Scanned images with their URLs and codes in hex.",
        {
            **{k: v for k, v in TABLES["items"][1].items() if k != "locator"},
            "url": "the image's URL, from its metadata",
            "page_url": "the page that shows it, from its metadata",
            "phash": f"pHash, {_HEX}",
            "dhash": f"dHash, {_HEX}",
        },
    ),
}


def datasette_metadata(database: str) -> dict[str, Any]:
    """Datasette's metadata for a copyscan database named ``database`` (its file name without
    ``.db``): every table and view described, column by column."""
    tables: dict[str, Any] = {}
    for name, (description, columns) in {**TABLES, **VIEWS}.items():
        tables[name] = {"description": description, "columns": dict(columns)}
    tables["catalog"]["label_column"] = "path"
    tables["items"]["label_column"] = "path"
    tables["rehash_codes"]["hidden"] = True
    return {
        "title": "copyscan",
        "description": "Catalog, scan history and checks of copyscan, the image copy detector.",
        "databases": {database: {"tables": tables}},
    }

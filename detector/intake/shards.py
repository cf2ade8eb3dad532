"""Crawl shards as img2dataset writes them: webdataset ``.tar`` shards and Parquet shards.

- A webdataset shard is a plain (uncompressed) tar whose members are grouped by key (the
  member's path up to the first dot of its file name): ``KEY.jpg`` (or png, webp, ...) is the
  image, ``KEY.json`` its metadata (``url``, ``key``, ``status``, sizes, ...) and ``KEY.txt``
  its caption. Each image member is an input named ``SHARD/MEMBER``; its bytes are read from
  their offset in the shard when it is scanned. Keys without an image (failed downloads) are
  no inputs. A shard damaged part-way gives the inputs before the damage and an error item.
- A Parquet shard holds the image bytes in a binary column (``bytes``, ``jpg``, ``png``,
  ``webp`` or ``image``) or names files in ``path`` (relative to the shard's folder); every
  other column is metadata. A row is named by its ``path``, else ``SHARD/KEY.EXT`` by its
  ``key`` (EXT the bytes column, where it names a format), else ``SHARD#N`` (N from 1). Rows
  whose download failed (no bytes, a ``status`` other than ``success``) are no inputs.
  img2dataset writes a metadata-only Parquet file beside each tar shard: read from a folder,
  it is left out for its tar.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterator
from typing import Any

from detector.intake.inputs import FILE, PARQUET, TAR, UNUSABLE, Input, meta_text, require_pyarrow
from detector.intake.loader import IMAGE_SUFFIXES

TAR_SUFFIX = ".tar"
COMPRESSED_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")
PARQUET_SUFFIX = ".parquet"
BYTES_COLUMNS = ("bytes", "jpg", "png", "webp", "image")
PATH_COLUMN = "path"
KEY_COLUMN = "key"
_IMAGE_EXTENSIONS = frozenset(s.lstrip(".") for s in IMAGE_SUFFIXES)


def tar_inputs(shard: str) -> Iterator[Input]:
    """The images of a webdataset tar shard, in the shard's order."""
    if shard.lower().endswith(COMPRESSED_TAR_SUFFIXES):
        yield Input(
            shard,
            kind=UNUSABLE,
            field=f"{shard}: compressed tar shards are not read; "
            "decompress it (webdataset shards from img2dataset are plain .tar)",
        )
        return
    images: list[tuple[str, tarfile.TarInfo]] = []
    meta: dict[str, dict[str, Any]] = {}
    damage = None
    try:
        with tarfile.open(shard, mode="r:") as tar:
            while True:
                try:
                    member = tar.next()
                except (tarfile.TarError, OSError, EOFError) as e:
                    damage = f"{shard} is damaged after {len(images)} images: {e}"
                    break
                if member is None:
                    break
                if not member.isreg():
                    continue
                key, ext = _split(member.name)
                if ext.lower().rsplit(".", 1)[-1] in _IMAGE_EXTENSIONS:
                    images.append((key, member))
                elif ext.lower() in ("json", "txt"):
                    _add_meta(tar, member, ext.lower(), meta.setdefault(key, {}))
    except (tarfile.TarError, OSError) as e:
        yield Input(shard, kind=UNUSABLE, field=f"{shard} is not a readable tar shard: {e}")
        return
    for key, member in images:
        yield Input(
            f"{shard}/{member.name}",
            kind=TAR,
            source=shard,
            at=member.offset_data,
            size=member.size,
            meta=meta_text(meta.get(key, {})),
        )
    if damage:
        yield Input(f"{shard}#damaged", kind=UNUSABLE, field=damage)


def _split(name: str) -> tuple[str, str]:
    """A member's webdataset key and extension: ``a/b/0001.seg.png`` is ``a/b/0001``, ``seg.png``."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext


def _add_meta(tar: tarfile.TarFile, member: tarfile.TarInfo, ext: str, into: dict[str, Any]) -> None:
    if member.size > 1 << 20:  # a metadata member this large is not img2dataset's
        return
    f = tar.extractfile(member)
    if f is None:
        return
    text = f.read().decode("utf-8", "replace")
    if ext == "txt":
        into.setdefault("caption", text.strip())
        return
    try:
        data = json.loads(text)
    except ValueError:
        return
    if isinstance(data, dict):
        caption = into.pop("caption", None)
        into.update(data)
        if caption is not None:
            into.setdefault("caption", caption)


def parquet_inputs(shard: str, beside_tar: bool = False) -> Iterator[Input]:
    """The images of a Parquet shard, row by row. ``beside_tar``: the shard sits next to a tar
    shard of the same name (img2dataset's metadata file): a shard without images is then left
    out instead of reported."""
    pq = require_pyarrow()
    try:
        schema = pq.read_schema(shard)
        names = [n.lower() for n in schema.names]
        binary = {n.lower() for n, t in zip(schema.names, schema.types, strict=True) if _is_binary(t)}
        field = next((schema.names[names.index(c)] for c in BYTES_COLUMNS if c in binary), None)
        path = schema.names[names.index(PATH_COLUMN)] if PATH_COLUMN in names else None
        if field is None and path is None:
            if not beside_tar:
                yield Input(
                    shard,
                    kind=UNUSABLE,
                    field=f"{shard} has no image column "
                    f"({', '.join(BYTES_COLUMNS)}) and no {PATH_COLUMN} column",
                )
            return
        rest = [n for n in schema.names if n != field and n.lower() not in binary]
        table = pq.read_table(shard, columns=rest)
        present = _present(pq, shard, field) if field is not None else None
    except (OSError, KeyError, ValueError) as e:  # pyarrow's errors derive from these
        yield Input(shard, kind=UNUSABLE, field=f"cannot read Parquet shard {shard}: {e}")
        return
    base = os.path.dirname(shard)
    extension = field.lower() if field is not None and field.lower() in _IMAGE_EXTENSIONS else None
    for row, record in enumerate(table.to_pylist()):
        named = record.get(path) if path is not None else None
        has_bytes = present is not None and present[row]
        if not has_bytes and str(record.get("status") or "success") != "success":
            continue  # a failed download: no image was ever there
        meta = meta_text(record, frozenset({path} if path else ()))
        if has_bytes or named in (None, ""):
            key = record.get(KEY_COLUMN)
            if named not in (None, ""):
                name = str(named)
            elif key not in (None, ""):
                name = f"{shard}/{key}" + (f".{extension}" if extension else "")
            else:
                name = f"{shard}#{row + 1}"
            yield Input(name, kind=PARQUET, source=shard, at=row, field=field or "", meta=meta)
        else:
            yield Input(os.path.join(base, str(named)), kind=FILE, meta=meta)


def _is_binary(t: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t))


def _present(pq: Any, shard: str, field: str) -> list[bool]:
    """For each row, whether its image column holds bytes; read a row group at a time, so the
    images are never all in memory."""
    f = pq.ParquetFile(shard)
    at = f.schema_arrow.get_field_index(field)
    present: list[bool] = []
    for g in range(f.metadata.num_row_groups):
        group = f.metadata.row_group(g)
        stats = group.column(at).statistics if at < group.num_columns else None
        if stats is not None and stats.has_null_count and stats.null_count == 0:
            present.extend([True] * group.num_rows)  # no nulls: nothing to read
            continue
        column = f.read_row_group(g, columns=[field]).column(0)
        present.extend(column.is_valid().to_pylist())
    return present

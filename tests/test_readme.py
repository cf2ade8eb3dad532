"""The README's Quick start, run as written: its shell block, line by line under ``bash -e``, in
a fresh folder where ``fixtures`` is the shipped fixtures and ``copyscan`` is this
environment's command line."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import FIXTURES, ROOT

OWNER = "Demo Rights Ltd"


def quick_start() -> str:
    """The first ``sh`` block after the README's "## Quick start" heading."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Quick start\n") :]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match is not None, "no ```sh block under ## Quick start"
    return match.group(1)


def commands(block: str) -> list[str]:
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def bin_dir(tmp_path: Path) -> Path:
    """A folder holding ``copyscan``: the script beside this Python, else a shim running ``python
    -m cli`` with it."""
    here = Path(sys.executable).parent
    if (here / "copyscan").is_file():
        return here
    shim = tmp_path / "bin"
    shim.mkdir()
    script = shim / "copyscan"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cli "$@"\n')
    script.chmod(0o755)
    return shim


def run_block(block: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run ``block`` with ``bash -e`` in a fresh folder beside the shipped fixtures."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "fixtures").symlink_to(FIXTURES, target_is_directory=True)
    script = tmp_path / "quick_start.sh"
    script.write_text(block)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COPYSCAN_")}
    env["PATH"] = f"{bin_dir(tmp_path)}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)  # the checkout's copyscan, also where it is not installed
    bash = shutil.which("bash")
    assert bash is not None
    done = subprocess.run(
        [bash, "-e", "-o", "pipefail", str(script)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done, work


def test_the_quick_start_is_a_few_copyscan_commands():
    lines = commands(quick_start())
    assert 3 <= len(lines) <= 15
    assert all(line.startswith("copyscan ") for line in lines), lines


def test_the_quick_start_runs_as_written(tmp_path):
    done, work = run_block(quick_start(), tmp_path)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    truth = json.loads((FIXTURES / "crawl_truth.json").read_text())
    copies = {name: original for name, original in truth.items() if original not in (None, "error")}
    unusable = {name for name, original in truth.items() if original == "error"}

    # catalog add, then catalog list: the 7 catalog images under their owner
    assert "added 7" in done.stdout
    listed = re.findall(rf"^\s*(\d+)\s+{OWNER}\s+\d+x\d+\s+[0-9a-f]{{16}}\s", done.stdout, re.M)
    assert sorted(map(int, listed)) == list(range(1, 8))

    # scan: every attacked copy flagged as a copy of its own catalog image, the bad files
    # reported as errors, and status 4 said on stderr (the block accepts it)
    with open(work / "scan.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    flagged = {Path(r["query"]).name: r for r in rows if r["verdict"] == "copy"}
    assert set(flagged) == set(copies)
    for name, row in flagged.items():
        assert Path(row["catalog_path"]).name == copies[name], name
        assert Path(row["catalog_path"]).parent.name == "catalog" and row["owner"] == OWNER
    assert {Path(r["query"]).name for r in rows if r["status"] == "error"} == unusable
    assert "exit status 4" in done.stderr

    # report: the HTML folder and the CSV of the flagged pairs
    index = work / "report" / "index.html"
    assert index.is_file() and OWNER in index.read_text(encoding="utf-8")
    assert any((work / "report" / "thumbs").iterdir())
    with open(work / "report.csv", newline="", encoding="utf-8") as f:
        reported = list(csv.DictReader(f))
    assert len(reported) == len(copies) and {r["verdict"] for r in reported} == {"copy"}

    # check: one upload, found as a copy of its original; runs: the finished scan
    assert re.search(r"^copy .*chelsea-crop\.jpg .*/catalog/chelsea\.jpg", done.stdout, re.M)
    assert re.search(r"^\s*1\s+finished\s", done.stdout, re.M)


@pytest.mark.parametrize(
    "breakage",
    [
        lambda line: line + " --no-such-option",  # a flag the command line does not have
        lambda line: line.replace("fixtures/", "missing/", 1),  # a path that is not there
    ],
)
def test_a_broken_quick_start_fails(tmp_path, breakage):
    lines = quick_start().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("copyscan "))
    lines[first] = breakage(lines[first])
    done, work = run_block("\n".join(lines) + "\n", tmp_path)
    assert done.returncode in (1, 2), done.stderr  # usage error, or a missing input
    assert not (work / "scan.csv").exists()  # bash -e stopped at the broken line

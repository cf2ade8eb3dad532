"""The fuzz target ``fuzz/fuzz_loader.py`` run without atheris, so ``make test`` exercises it:
its seeds, a fixed set of seeded mutations of them, and its two command-line modes."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from detector.intake.loader import content_hash, decode

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "fuzz" / "fuzz_loader.py"

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL")


@pytest.fixture(scope="module")
def fuzz() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_loader", TARGET)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_seeds_cover_every_allowed_format_and_decode(fuzz: ModuleType) -> None:
    seeds = fuzz.seed_corpus()
    formats = set()
    decoded = 0
    for data in seeds:
        if fuzz.check_one(data):
            decoded += 1
            formats.add(decode(data, fuzz.SETTINGS).format)
    assert formats == {"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"}
    assert decoded == len(seeds) - 2  # all but the truncated download and the flat image


def test_mutations_are_fixed_by_their_seed_and_mutate(fuzz: ModuleType) -> None:
    a = fuzz.mutated_corpus(50, seed=3)
    assert a == fuzz.mutated_corpus(50, seed=3)
    assert a != fuzz.mutated_corpus(50, seed=4)
    seeds = set(fuzz.seed_corpus())
    assert sum(m not in seeds for m in a) >= 45


def test_target_keeps_its_contract_on_a_fixed_mutated_corpus(fuzz: ModuleType) -> None:
    corpus = fuzz.mutated_corpus(600, seed=0)
    outcomes = [fuzz.check_one(data) for data in corpus]  # raises on a broken contract
    # the corpus reaches past the header checks: some mutants still decode
    assert 10 <= sum(outcomes) < len(corpus)


def test_contract_break_is_saved_and_raised(
    fuzz: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    broken = fuzz.seed_corpus()[5]

    def target(data: bytes) -> bool:
        if data == broken:
            raise IndexError("what Pillow raised on a cut GIF")
        return False

    with pytest.raises(IndexError):
        fuzz.run_plain(1.0, seed=0, target=target)
    assert (tmp_path / f"crash-{content_hash(broken)}").read_bytes() == broken


def test_plain_mode_runs_for_the_time_given(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(TARGET), "--plain", "-max_total_time=2", "-seed=1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "no contract broken" in out.stdout
    assert not list(tmp_path.glob("crash-*"))


def test_atheris_mode_runs(tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris is optional (pip install -e '.[fuzz]')")
    corpus = tmp_path / "corpus"
    out = subprocess.run(
        [sys.executable, str(TARGET), "-runs=300", "-seed=1", str(corpus)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Done 300 runs" in out.stderr
    assert len(list(corpus.iterdir())) >= 30  # seeded from fixtures/ and the generated formats
    assert not list(tmp_path.glob("crash-*"))

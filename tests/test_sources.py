"""``detector.intake.sources.expand_sources``: turning named paths into the list of files to read."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from detector.intake.sources import expand_sources


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A folder with images at several depths and files that are not images."""
    root = tmp_path / "photos"
    for rel in [
        "b.png",
        "a.jpg",
        "C.JPEG",
        "notes.txt",
        "README",
        "scan.tiff",
        "raw.cr2",
        "z/deep/last.webp",
        "z/deep/skip.pdf",
        "m/one.gif",
        "m/two.bmp",
        "m/three.jpe",
        "m/four.tif",
        ".hidden/h.png",
    ]:
        touch(root / rel)
    return root


def test_folder_walked_recursively_sorted_images_only(tree: Path) -> None:
    r = str(tree)
    assert expand_sources([tree]) == [
        f"{r}/C.JPEG",
        f"{r}/a.jpg",
        f"{r}/b.png",
        f"{r}/scan.tiff",
        f"{r}/.hidden/h.png",
        f"{r}/m/four.tif",
        f"{r}/m/one.gif",
        f"{r}/m/three.jpe",
        f"{r}/m/two.bmp",
        f"{r}/z/deep/last.webp",
    ]


def test_walk_order_is_sorted_not_creation_or_disk_order(tmp_path: Path) -> None:
    # Many names created in a scrambled order, so directory-listing order cannot pass for sorted.
    root = tmp_path / "many"
    names = [f"{c}{i}" for i in range(3) for c in "qwertyuiopasdfghjklzxcvbnm"]
    scrambled = [names[(7 * k) % len(names)] for k in range(len(names))]
    assert sorted(scrambled) == sorted(names)
    for name in scrambled:
        touch(root / name / "img.png")
        touch(root / f"{name}.jpg")
    expected = [str(root / f"{n}.jpg") for n in sorted(names)]
    expected += [str(root / n / "img.png") for n in sorted(names)]
    assert expand_sources([root]) == expected


def test_folder_named_as_string_with_trailing_slash(tree: Path) -> None:
    assert expand_sources([str(tree) + "/"]) == expand_sources([tree])


def test_empty_folder_gives_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert expand_sources([tmp_path / "empty"]) == []


def test_file_named_directly_is_kept_whatever_its_extension(tree: Path) -> None:
    named = [tree / "README", tree / "raw.cr2", tree / "z/deep/skip.pdf", tree / "a.jpg"]
    assert expand_sources(named) == [str(p) for p in named]


def test_list_file_relative_absolute_comments_blank_lines(tmp_path: Path, tree: Path) -> None:
    lists = tmp_path / "lists"
    lists.mkdir()
    elsewhere = touch(tmp_path / "elsewhere" / "e.png")
    local = touch(lists / "local.jpg")
    list_file = lists / "inputs.txt"
    list_file.write_text(
        "# images to check\n"
        "\n"
        "local.jpg\n"
        f"   {elsewhere}   \n"
        "  # indented comment\n"
        "../photos/b.png\n"
        "\t\n"
        f"{tree / 'README'}\n"
        "sub/missing.png\n",
        encoding="utf-8",
    )
    assert expand_sources([list_file]) == [
        str(local),
        str(elsewhere),
        str(lists / "../photos/b.png"),
        str(tree / "README"),
        str(lists / "sub/missing.png"),
    ]


@pytest.mark.parametrize("name", ["inputs.lst", "inputs.list", "INPUTS.TXT"])
def test_other_list_suffixes(tmp_path: Path, name: str) -> None:
    touch(tmp_path / "a.png")
    list_file = tmp_path / name
    list_file.write_text("a.png\r\n# c\r\nb.png\r\n", encoding="utf-8")
    assert expand_sources([list_file]) == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]


def test_relative_list_file_entries_relative_to_list_folder(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "l.txt").write_text("x.png\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert expand_sources(["sub/l.txt"]) == [os.path.join("sub", "x.png")]


def test_txt_inside_a_folder_is_not_read_as_a_list(tmp_path: Path) -> None:
    root = tmp_path / "d"
    touch(root / "a.png")
    (root / "list.txt").write_text("elsewhere.png\n", encoding="utf-8")
    assert expand_sources([root]) == [str(root / "a.png")]


def test_duplicates_kept_once_in_first_order(tmp_path: Path, tree: Path) -> None:
    list_file = tmp_path / "l.txt"
    list_file.write_text(f"{tree / 'm/two.bmp'}\n{tree / 'b.png'}\n{tree / 'm/two.bmp'}\n", encoding="utf-8")
    out = expand_sources([tree / "m/one.gif", tree / "m", list_file, tree / "b.png", tree / "m/one.gif"])
    m = tree / "m"
    assert out == [
        str(m / "one.gif"),
        str(m / "four.tif"),
        str(m / "three.jpe"),
        str(m / "two.bmp"),
        str(tree / "b.png"),
    ]
    assert len(out) == len(set(out))


def test_same_folder_twice_listed_once(tree: Path) -> None:
    assert expand_sources([tree, str(tree), tree]) == expand_sources([tree])


def test_missing_paths_are_kept(tmp_path: Path) -> None:
    touch(tmp_path / "here.png")
    missing = tmp_path / "gone.png"
    missing_list = tmp_path / "gone.txt"
    missing_dir = tmp_path / "no_such_dir"
    out = expand_sources([missing, tmp_path / "here.png", missing_list, missing_dir])
    assert out == [str(missing), str(tmp_path / "here.png"), str(missing_list), str(missing_dir)]


def test_generator_input_and_empty_input(tmp_path: Path) -> None:
    touch(tmp_path / "a.png")
    assert expand_sources(p for p in [tmp_path / "a.png"]) == [str(tmp_path / "a.png")]
    assert expand_sources([]) == []


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_symlink_loop_terminates_and_lists_each_file_once(tmp_path: Path) -> None:
    root = tmp_path / "d"
    touch(root / "a.png")
    touch(root / "sub" / "b.jpg")
    os.symlink(root, root / "loop")
    os.symlink(root, root / "sub" / "back")
    assert (root / "loop" / "loop" / "sub" / "b.jpg").exists()  # the loop is real
    # Run in a daemon thread so a walk that follows the loop fails the test instead of hanging it.
    result: list[list[str]] = []
    worker = threading.Thread(target=lambda: result.append(expand_sources([root])), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "expand_sources did not terminate on a symlink loop"
    assert result == [[str(root / "a.png"), str(root / "sub" / "b.jpg")]]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_symlinked_file_inside_folder_is_listed(tmp_path: Path) -> None:
    root = tmp_path / "d"
    target = touch(tmp_path / "outside" / "t.png")
    root.mkdir()
    os.symlink(target, root / "link.png")
    assert expand_sources([root]) == [str(root / "link.png")]

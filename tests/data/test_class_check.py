"""`stop-lightning manifest check-classes`: a published class list checked against built manifests,
through the CLI: one line and exit 0 when it fits, one line and exit 2 naming the file when not."""

from __future__ import annotations

import re

import pytest

from stop_lightning.cli import main

# Awkward names on purpose: a K600 name with brackets, UCF101's CamelCase, HMDB51's underscores.
CLASSES = ["ApplyEyeMakeup", "backflip (human)", "dyeing hair", "ride_bike", "brush_hair", "zumba"]


@pytest.fixture
def manifests(tmp_path):
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "classes.txt").write_text("".join(f"{name}\n" for name in CLASSES))
    return folder


def check(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["manifest", "check-classes", *args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_a_list_that_fits_passes_with_its_count(manifests, tmp_path, capsys):
    listed = ["apply eye makeup", "backflip (human)", "ride bike"]  # the words forms ViFi-CLIP writes
    base = tmp_path / "base.csv"
    base.write_text("id,name\n" + "".join(f"{i},{name}\n" for i, name in enumerate(listed)))
    novel = tmp_path / "novel.txt"
    novel.write_text("# the other half\ndyeing hair\nbrush_hair\nzumba\n")
    code, out, err = check(capsys, str(base), "--manifests", str(manifests), "--count", "3")
    assert (code, err) == (0, "")
    assert out == f"{base}: 3 classes, each a class of {manifests / 'classes.txt'}\n"
    code, out, _ = check(capsys, str(novel), "--manifests", str(manifests), "--disjoint-from", str(base))
    assert code == 0 and out.rstrip().endswith(f"none in {base}") and ": 3 classes," in out
    # The complement of the whole classes.txt shares everything with it.
    assert check(capsys, str(novel), "--manifests", str(manifests), "--count", str(len(CLASSES) - 3))[0] == 0


@pytest.mark.parametrize(
    "text, extra, expected",
    [
        ("id,name\n0,dying hair\n", [], r"1 listed class.*'dying hair' \(did you mean 'dyeing hair'\?\)"),
        ("ride_bike\nzumba\n", ["--count", "3"], "lists 2 classes, the published list has 3"),
        ("ride_bike\nride bike\n", [], "two listed names are the same class"),
        ("ride_bike\nride_bike\n", [], "'ride_bike' is listed twice"),
        ("# nothing but a comment\n", [], "lists no class"),
        ("ride bike\nzumba\n", ["--disjoint-from", "OTHER"], r"2 of its classes are also in .*'ride bike'"),
    ],
)
def test_a_list_that_does_not_fit_is_one_line_exit_2(manifests, tmp_path, capsys, text, extra, expected):
    listed = tmp_path / "listed.csv"
    listed.write_text(text)
    other = tmp_path / "other.txt"
    other.write_text("ZUMBA\nride_bike\n")  # matched as words: case and underscores do not count
    extra = [str(other) if a == "OTHER" else a for a in extra]
    code, out, err = check(capsys, str(listed), "--manifests", str(manifests), *extra)
    assert code == 2 and out == ""
    assert one_line(err).startswith(f"error: {listed}")
    assert re.search(expected, err), err


def test_missing_files_are_one_line_exit_2(manifests, tmp_path, capsys):
    listed = tmp_path / "listed.txt"
    listed.write_text("zumba\n")
    code, _, err = check(capsys, str(listed), "--manifests", str(tmp_path / "nowhere"))
    assert code == 2 and "classes.txt does not exist" in one_line(err)
    code, _, err = check(capsys, str(tmp_path / "absent.csv"), "--manifests", str(manifests))
    assert code == 2 and "absent.csv does not exist" in one_line(err)


def test_manifest_help_names_the_check(capsys):
    with pytest.raises(SystemExit):
        main(["manifest", "--help"])
    assert "stop-lightning manifest check-classes --help" in capsys.readouterr().out

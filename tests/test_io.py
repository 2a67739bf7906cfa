import os

import pandas as pd
import pytest

from endofm.io import atomic_path, write_csv, write_json


def test_atomic_file_appears_only_on_success(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".txt" and tmp != target
        tmp.write_text("done")
        assert not target.exists()
    assert target.read_text() == "done"
    assert os.listdir(target.parent) == ["out.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_file_failure_leaves_nothing(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.csv"]


def test_atomic_directory_replaces_whole(tmp_path):
    target = tmp_path / "dir"
    (target / "stale").mkdir(parents=True)
    with atomic_path(target, directory=True) as tmp:
        (tmp / "a.txt").write_text("a")
    assert target.stat().st_mode & 0o755 == 0o755
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target, directory=True) as tmp:
            (tmp / "b.txt").write_text("b")
            raise KeyboardInterrupt
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir"]


def test_write_helpers(tmp_path):
    write_json(tmp_path / "x.json", {"a": 1})
    assert (tmp_path / "x.json").read_text().strip() == '{\n  "a": 1\n}'
    write_csv(tmp_path / "x.csv", pd.DataFrame({"a": [1, 2]}))
    assert pd.read_csv(tmp_path / "x.csv")["a"].tolist() == [1, 2]

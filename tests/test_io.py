import json
import os
import re

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


def test_output_lock_refuses_a_live_holder_and_takes_over_a_gone_one(tmp_path, caplog):
    import socket
    import subprocess

    from endofm.io import LOCK_NAME, OutputLocked, output_lock

    with pytest.raises(RuntimeError), output_lock(tmp_path / "new/run"):
        raise RuntimeError("the run failed before writing anything")
    assert not (tmp_path / "new").exists()  # folders made for the lock alone do not outlive it

    folder, host = tmp_path / "run", socket.gethostname()
    folder.mkdir()
    lock = folder / LOCK_NAME
    with output_lock(folder):
        holder = json.loads(lock.read_text())
        assert (holder["pid"], holder["host"]) == (os.getpid(), host)
        with pytest.raises(
            OutputLocked, match=rf"^{re.escape(str(folder))}: in use by PID {os.getpid()} on {host} since "
        ):
            with output_lock(folder):
                pass
        assert json.loads(lock.read_text()) == holder  # the refused one leaves the holder's lock alone
    assert not lock.exists()

    gone = subprocess.Popen(["true"])
    gone.wait()
    lock.write_text(json.dumps({"pid": gone.pid, "host": host, "started": "x", "command": "y"}))
    with output_lock(folder):  # a dead process on this host: taken over
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert "which is gone" in caplog.text

    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "x", "command": "y"}))
    with pytest.raises(OutputLocked, match="in use by PID 1 on elsewhere"):  # another host, heartbeat fresh
        with output_lock(folder):
            pass
    old = lock.stat().st_mtime - 600
    os.utime(lock, (old, old))
    with output_lock(folder):  # another host, no heartbeat for 10 min: taken over
        pass
    with output_lock(folder, enabled=False):  # the other ranks of one job
        assert not lock.exists()


def test_json_is_written_valid_with_undefined_values_as_null(tmp_path):
    """NaN used to be written as the bare word NaN (coco_train.json, metrics): not JSON, refused by strict readers."""
    import json as strict_json

    import numpy as np

    from endofm.io import write_json

    path = write_json(tmp_path / "m.json", {"auroc": float("nan"), "f1": np.float32(0.5), "loss": [1.0, float("inf")],
                                            "n": np.int64(3), "ok": True})  # fmt: skip
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    record = strict_json.loads(text, parse_constant=lambda name: pytest.fail(f"non-JSON constant {name}"))
    assert record == {"auroc": None, "f1": 0.5, "loss": [1.0, None], "n": 3, "ok": True}

"""Downloads against a loopback HTTP server (Range, 503s, dropped connections), unpacking, fetch_source."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import pytest
from conftest import Behaviour

from endofm.data.download import DownloadError, download_file, fetch_source, sha256_file, unpack_archive
from endofm.data.sources import Download, get_source, list_source_videos

PAYLOAD = bytes(range(256)) * 2048 + b"tail"  # 512 KiB + 4 bytes, several read chunks' worth of distinct bytes
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def server(http_server) -> tuple[str, Behaviour]:
    http_server.behaviour.files["/data.bin"] = PAYLOAD
    return http_server.url, http_server.behaviour


def fetch(url: str, dest: Path, sha256: str | None = PAYLOAD_SHA, **kw) -> Path:
    kw = {"retries": 3, "timeout": 10.0, "backoff": 0.0, "progress": False, **kw}
    return download_file(url, dest, sha256, **kw)


def test_download_with_checksum(server, tmp_path: Path) -> None:
    base, b = server
    dest = tmp_path / "sub" / "data.bin"
    assert fetch(f"{base}/data.bin", dest) == dest
    assert dest.read_bytes() == PAYLOAD and sha256_file(dest) == PAYLOAD_SHA
    assert not (tmp_path / "sub" / "data.bin.part").exists()
    assert b.log == [("/data.bin", None)]
    # Present and verified: no second request.
    fetch(f"{base}/data.bin", dest)
    fetch(f"{base}/data.bin", dest, sha256=None)
    assert len(b.log) == 1


def test_checksum_mismatch_leaves_nothing(server, tmp_path: Path) -> None:
    base, _ = server
    dest = tmp_path / "data.bin"
    wrong = "0" * 64
    with pytest.raises(DownloadError, match=rf"data\.bin.*expected sha256 {wrong}, got {PAYLOAD_SHA}"):
        fetch(f"{base}/data.bin", dest, sha256=wrong)
    assert not dest.exists() and not (tmp_path / "data.bin.part").exists()


def test_malformed_checksum_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"sha256 must be 64 hex digits, got 'abc'"):
        download_file("http://127.0.0.1:9/x", tmp_path / "x", "abc")


def test_resume_from_partial_part(server, tmp_path: Path) -> None:
    base, b = server
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD[:100_000])
    fetch(f"{base}/data.bin", dest)
    assert b.log == [("/data.bin", "bytes=100000-")]
    assert dest.read_bytes() == PAYLOAD


def test_resume_restarts_when_server_ignores_range(server, tmp_path: Path) -> None:
    base, b = server
    b.ignore_range = True
    (tmp_path / "data.bin.part").write_bytes(b"garbage that is not a prefix")
    fetch(f"{base}/data.bin", tmp_path / "data.bin")
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD


def test_oversized_part_is_restarted_after_416(server, tmp_path: Path) -> None:
    base, b = server
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD + b"extra")
    fetch(f"{base}/data.bin", tmp_path / "data.bin")
    assert [r for _, r in b.log] == [f"bytes={len(PAYLOAD) + 5}-", None]
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD


def test_retries_after_503(server, tmp_path: Path) -> None:
    base, b = server
    b.fail_first = 2
    fetch(f"{base}/data.bin", tmp_path / "data.bin")
    assert len(b.log) == 3
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD


def test_gives_up_after_retries(server, tmp_path: Path) -> None:
    base, b = server
    b.fail_first = 10
    with pytest.raises(DownloadError, match=r"failed after 3 attempts.*HTTP 503"):
        fetch(f"{base}/data.bin", tmp_path / "data.bin", retries=2)
    assert len(b.log) == 3 and not (tmp_path / "data.bin").exists()


def test_404_is_not_retried(server, tmp_path: Path) -> None:
    base, b = server
    with pytest.raises(DownloadError, match=r"/missing\.bin: HTTP 404"):
        fetch(f"{base}/missing.bin", tmp_path / "missing.bin")
    assert len(b.log) == 1


def test_truncated_transfer_is_resumed(server, tmp_path: Path) -> None:
    base, b = server
    b.drop_once_at = 200_000
    fetch(f"{base}/data.bin", tmp_path / "data.bin")
    assert b.log == [("/data.bin", None), ("/data.bin", "bytes=200000-")]
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD


def test_truncated_transfer_without_retries_keeps_part(server, tmp_path: Path) -> None:
    base, b = server
    b.drop_once_at = 1000
    with pytest.raises(DownloadError, match=r"transfer ended at byte 1000 of 524292.*kept for resuming"):
        fetch(f"{base}/data.bin", tmp_path / "data.bin", retries=0)
    assert (tmp_path / "data.bin.part").stat().st_size == 1000


# --------------------------------------------------------------------------------------------- unpacking


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def make_tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return path


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_unpack_flattens_single_top_folder(tmp_path: Path, kind: str) -> None:
    members = {"pack/a.txt": b"a", "pack/sub/b.txt": b"b"}
    make = make_zip if kind == "zip" else make_tar
    archive = make(tmp_path / f"x.{kind}", members)
    out = tmp_path / "out"
    (out / "stale").mkdir(parents=True)  # an existing folder is replaced
    assert unpack_archive(archive, out) == out
    assert tree(out) == {"a.txt": b"a", "sub/b.txt": b"b"}
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "sub"]


def test_unpack_keeps_several_top_entries(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "x.tgz", {"one/a.txt": b"a", "two.txt": b"2"})
    assert tree(unpack_archive(archive, tmp_path / "out")) == {"one/a.txt": b"a", "two.txt": b"2"}


@pytest.mark.parametrize(
    ("kind", "members", "links", "pattern"),
    [
        ("zip", {"ok.txt": b"", "../evil.txt": b"x"}, None, r"'\.\./evil\.txt' escapes"),
        ("zip", {"/abs/evil.txt": b"x"}, None, r"absolute path"),
        ("tar.gz", {"a/../../evil.txt": b"x"}, None, r"escapes"),
        ("tar.gz", {"ok.txt": b""}, {"link": "../../etc/passwd"}, r"points outside"),
    ],
)
def test_unpack_refuses_path_traversal(tmp_path: Path, kind, members, links, pattern) -> None:
    archive = (
        make_zip(tmp_path / "bad.zip", members) if kind == "zip" else make_tar(tmp_path / "bad.tgz", members, links)
    )
    out = tmp_path / "deep" / "out"
    with pytest.raises(DownloadError, match=pattern):
        unpack_archive(archive, out)
    assert not out.exists() and not (tmp_path / "evil.txt").exists() and not (tmp_path / "deep/evil.txt").exists()
    assert list((tmp_path / "deep").iterdir()) == []  # no temporary folder left behind


def test_unpack_rejects_non_archive(tmp_path: Path) -> None:
    (tmp_path / "x.zip").write_bytes(b"not an archive")
    with pytest.raises(DownloadError, match=r"x\.zip: not a zip or tar archive"):
        unpack_archive(tmp_path / "x.zip", tmp_path / "out")


# --------------------------------------------------------------------------------------------- fetch_source


def test_fetch_source_with_overrides_then_list_videos(server, tmp_path: Path) -> None:
    base, b = server
    archive = make_zip(
        tmp_path / "src.zip",
        {"colono/case1/v1.mp4": b"v1", "colono/v2.avi": b"v2", "colono/readme.txt": b"r"},
    )
    b.files["/colono.zip"] = archive.read_bytes()
    b.files["/extra.txt"] = b"licence text"
    overrides = [
        Download(f"{base}/colono.zip", "colono.zip", hashlib.sha256(archive.read_bytes()).hexdigest()),
        Download(f"{base}/extra.txt", "LICENCE.txt", unpack=False),
    ]
    raw, dl = tmp_path / "raw" / "colonoscopic", tmp_path / "downloads"
    assert fetch_source("colonoscopic", raw, dl, overrides=overrides, progress=False) == raw
    assert (dl / "colonoscopic" / "colono.zip").read_bytes() == archive.read_bytes()
    assert tree(raw) == {"case1/v1.mp4": b"v1", "v2.avi": b"v2", "readme.txt": b"r", "LICENCE.txt": b"licence text"}
    assert list_source_videos("colonoscopic", raw) == [raw / "case1/v1.mp4", raw / "v2.avi"]
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["colonoscopic"]
    # An existing raw folder is returned untouched, without any request.
    n = len(b.log)
    assert fetch_source("colonoscopic", raw, dl, overrides=overrides, progress=False) == raw
    assert len(b.log) == n


def test_fetch_source_clashing_archives_leave_no_raw_dir(server, tmp_path: Path) -> None:
    base, b = server
    b.files["/a.zip"] = make_zip(tmp_path / "a.zip", {"v.mp4": b"a"}).read_bytes()
    b.files["/b.zip"] = make_zip(tmp_path / "b.zip", {"v.mp4": b"b"}).read_bytes()
    overrides = [Download(f"{base}/a.zip", "a.zip"), Download(f"{base}/b.zip", "b.zip")]
    raw = tmp_path / "raw" / "ldpolypvideo"
    with pytest.raises(DownloadError, match=r"'v\.mp4' is provided by more than one download"):
        fetch_source("ldpolypvideo", raw, tmp_path / "dl", overrides=overrides, progress=False)
    assert list((tmp_path / "raw").iterdir()) == []


@pytest.mark.parametrize("name", ["sun_seg", "cholect45", "cvc12k", "polypdiag", "kumc", "colonoscopic"])
def test_fetch_source_without_downloads_explains(tmp_path: Path, name: str) -> None:
    raw = tmp_path / "raw" / name
    source = get_source(name)
    with pytest.raises(DownloadError) as info:
        fetch_source(name, raw, tmp_path / "dl", progress=False)
    msg = str(info.value)
    assert source.homepage in msg and f"Expected folder: {raw}" in msg and source.title in msg
    assert not raw.exists() and not (tmp_path / "dl").exists()


def test_fetch_builtin_source_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"built in and generated"):
        fetch_source("synthetic_colonoscopy", tmp_path / "raw", tmp_path / "dl", overrides=[], progress=False)


def test_clip_weights_download_is_one_verified_file(server, tmp_path: Path) -> None:
    """``download_clip_vitb16``: the registry's single file, kept as is (not unpacked) after its checksum passes,
    and readable by the image-backbone loader; a wrong checksum leaves nothing."""
    import dataclasses

    import torch
    from safetensors.torch import save_file

    from endofm.models.checkpoint import load_backbone_state

    base, b = server
    (entry,) = get_source("clip_vitb16").downloads
    weights = {"visual.class_embedding": torch.arange(4.0), "logit_scale": torch.tensor(4.6)}
    save_file(weights, tmp_path / "w.safetensors")
    payload = (tmp_path / "w.safetensors").read_bytes()
    b.files[f"/{entry.filename}"] = payload
    local = dataclasses.replace(entry, url=f"{base}/{entry.filename}", sha256=hashlib.sha256(payload).hexdigest())
    raw, dl = tmp_path / "raw" / "clip_vitb16", tmp_path / "downloads"
    assert fetch_source("clip_vitb16", raw, dl, overrides=[local], progress=False) == raw
    assert tree(raw) == {entry.filename: payload}
    state = load_backbone_state(raw / entry.filename)
    assert list(state) == ["cls_token"] and torch.equal(state["cls_token"], torch.arange(4.0).reshape(1, 1, 4))

    wrong = dataclasses.replace(local, sha256="0" * 64)
    raw2 = tmp_path / "raw2" / "clip_vitb16"
    with pytest.raises(DownloadError, match=r"checksum mismatch"):
        fetch_source("clip_vitb16", raw2, tmp_path / "dl2", overrides=[wrong], progress=False)
    assert not raw2.exists()

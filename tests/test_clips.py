"""Clip extraction: the official cut rule, manifests, idempotency, bad sources, atomic writes."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from endofm.config import ConfigError, from_dict
from endofm.data import clips
from endofm.data.clips import (
    MANIFEST_COLUMNS,
    ClipConfig,
    ClipExtractionError,
    extract_clips,
    plan_clips,
    source_video_id,
)
from endofm.data.layouts import CLIPS_MANIFEST, SKIPPED_REPORT
from endofm.data.video import probe_video, read_frames, write_frame_folder, write_video

L = 150


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, [(0, 1)]),
        (L - 1, [(0, L - 1)]),
        (L, [(0, L)]),
        (2 * L - 1, [(0, 2 * L - 1)]),
        (2 * L, [(0, L), (L, L)]),
        (2 * L + 37, [(0, L), (L, L + 37)]),
        (5 * L + 149, [(0, L), (L, L), (2 * L, L), (3 * L, L), (4 * L, L + 149)]),
    ],
)
def test_plan_clips(n, expected):
    plan = plan_clips(n, L)
    assert plan == expected
    assert sum(length for _, length in plan) == n
    assert all(s + length == nxt for (s, length), (nxt, _) in zip(plan, plan[1:], strict=False))  # contiguous
    assert all(L <= length < 2 * L for _, length in plan) or len(plan) == 1


@pytest.mark.parametrize(("n", "length"), [(0, 150), (10, 0)])
def test_plan_clips_rejects_nonsense(n, length):
    with pytest.raises(ValueError, match="cannot plan clips"):
        plan_clips(n, length)


def test_clip_config_defaults_and_validation():
    assert ClipConfig() == ClipConfig(clip_length=150, fps=30, short_side=256, on_error="fail", crf=18)
    with pytest.raises(ConfigError, match=r"^clips\.short_side must be an even number >= 8, got 255$"):
        from_dict(ClipConfig, {"short_side": 255}, "clips")
    with pytest.raises(ConfigError, match=r"clips.on_error: expected one of \['fail', 'skip'\]"):
        from_dict(ClipConfig, {"on_error": "ignore"}, "clips")
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(ClipConfig, {"clip_len": 10}, "clips")


def test_source_video_id(tmp_path):
    assert source_video_id(tmp_path / "case1" / "part.2.mp4", tmp_path) == "case1__part.2"
    assert source_video_id(tmp_path / "case.01", tmp_path) == "case.01"  # a frame folder keeps its name
    assert source_video_id(Path("raw/a/b.AVI"), Path("raw")) == "a__b"
    with pytest.raises(ValueError, match="is not inside the raw folder"):
        source_video_id(tmp_path.parent / "elsewhere.mp4", tmp_path)


# --- extraction end to end --------------------------------------------------------------------------

CFG = ClipConfig(clip_length=10, short_side=32)
H, W = 48, 64  # -> 32x42 clips (42.7 rounded to even)
STEP = 8


def coded(n: int) -> np.ndarray:
    """Frame k is a solid grey of level 8 * (k + 1), so a clip's frames say where they came from."""
    levels = (STEP * (np.arange(n) + 1)).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (n, H, W, 3)).copy()


def source_index(frames: np.ndarray) -> list[int]:
    return (np.round(frames.reshape(len(frames), -1).mean(axis=1) / STEP) - 1).astype(int).tolist()


@pytest.fixture
def raw(tmp_path) -> Path:
    root = tmp_path / "raw"
    write_video(root / "vid" / "a.mp4", coded(25), crf=0)  # 2 clips: 10 + 15 (last absorbs 5)
    write_video(root / "b.avi", coded(7))  # shorter than a clip: 1 clip of 7
    write_frame_folder(root / "c", coded(20), quality=95)  # 2 clips of 10
    return root


def videos_of(root: Path) -> list[Path]:
    return [root / "vid" / "a.mp4", root / "b.avi", root / "c"]


def clip_mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")}


def test_extract_clips_end_to_end(raw, tmp_path):
    out = tmp_path / "clips"
    manifest = extract_clips(raw, videos_of(raw), out, "demo", CFG, progress=False)

    on_disk = pd.read_csv(out / CLIPS_MANIFEST)
    assert list(on_disk.columns) == MANIFEST_COLUMNS
    pd.testing.assert_frame_equal(on_disk, manifest)
    expected = [
        ("b.avi", 0, 7, "b_00000.mp4"),
        ("c", 0, 10, "c_00000.mp4"),
        ("c", 10, 10, "c_00001.mp4"),
        ("vid/a.mp4", 0, 10, "vid__a_00000.mp4"),
        ("vid/a.mp4", 10, 15, "vid__a_00001.mp4"),
    ]
    assert (
        list(manifest[["source_video", "start_frame", "frames", "path"]].itertuples(index=False, name=None)) == expected
    )
    assert (manifest["source"] == "demo").all() and (manifest["fps"] == 30).all()
    assert (manifest["height"] == 32).all() and (manifest["width"] == 42).all()
    assert sorted(p.name for p in out.iterdir()) == sorted([*manifest["path"], CLIPS_MANIFEST, SKIPPED_REPORT])

    for row in manifest.itertuples():
        info = probe_video(out / row.path)
        assert (info.num_frames, info.height, info.width, info.fps) == (row.frames, 32, 42, 30.0)
        frames = read_frames(out / row.path, range(row.frames))
        assert source_index(frames) == list(range(row.start_frame, row.start_frame + row.frames))

    skipped = pd.read_csv(out / SKIPPED_REPORT)
    assert list(skipped.columns) == ["source_video", "reason"] and skipped.empty


def test_rerun_encodes_nothing_and_writes_the_same_manifest(raw, tmp_path):
    out = tmp_path / "clips"
    extract_clips(raw, videos_of(raw), out, "demo", CFG, progress=False)
    before, manifest_bytes = clip_mtimes(out), (out / CLIPS_MANIFEST).read_bytes()

    again = extract_clips(raw, videos_of(raw), out, "demo", CFG, threads=2, progress=False)
    assert clip_mtimes(out) == before
    assert (out / CLIPS_MANIFEST).read_bytes() == manifest_bytes
    assert len(again) == 5

    # a clip from other settings is not trusted: a new short side re-encodes everything
    resized = extract_clips(raw, videos_of(raw), out, "demo", ClipConfig(clip_length=10, short_side=16), progress=False)
    assert (resized["height"] == 16).all()
    assert all(probe_video(out / p).height == 16 for p in resized["path"])


def test_parallel_run_matches_serial(raw, tmp_path):
    serial = extract_clips(raw, videos_of(raw), tmp_path / "one", "demo", CFG, progress=False)
    parallel = extract_clips(raw, videos_of(raw), tmp_path / "two", "demo", CFG, threads=2, progress=False)
    pd.testing.assert_frame_equal(serial, parallel)


def test_bad_source_fails_the_job_by_default(raw, tmp_path):
    (raw / "junk.mp4").write_bytes(b"\x00not a video" * 100)
    with pytest.raises(
        ClipExtractionError, match=r"source 'demo': cannot cut .*junk\.mp4 into clips: .*not a readable"
    ):
        extract_clips(raw, [*videos_of(raw), raw / "junk.mp4"], tmp_path / "clips", "demo", CFG, progress=False)
    assert not (tmp_path / "clips" / CLIPS_MANIFEST).exists()


def test_skip_mode_lists_bad_sources(raw, tmp_path, caplog):
    (raw / "junk.mp4").write_bytes(b"\x00not a video" * 100)
    (raw / "empty.avi").touch()
    out = tmp_path / "clips"
    cfg = ClipConfig(clip_length=10, short_side=32, on_error="skip")
    with caplog.at_level(logging.INFO, logger="endofm.data.clips"):
        manifest = extract_clips(
            raw, [*videos_of(raw), raw / "junk.mp4", raw / "empty.avi"], out, "demo", cfg, progress=False
        )
    summary = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(summary) == 1 and "2 skipped; empty.avi (" in summary[0] and "; junk.mp4 (" in summary[0]
    assert set(manifest["source_video"]) == {"vid/a.mp4", "b.avi", "c"}
    skipped = pd.read_csv(out / SKIPPED_REPORT)
    assert skipped["source_video"].tolist() == ["empty.avi", "junk.mp4"]
    assert skipped["reason"].str.contains("empty file").tolist() == [True, False]
    assert skipped["reason"].str.contains("not a readable video").tolist() == [False, True]


def test_all_sources_bad_raises_even_in_skip_mode(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "junk.mp4").write_bytes(b"junk" * 100)
    cfg = ClipConfig(on_error="skip")
    with pytest.raises(ClipExtractionError, match=r"none of the 1 source videos could be read.*junk\.mp4"):
        extract_clips(raw, [raw / "junk.mp4"], tmp_path / "clips", "demo", cfg, progress=False)
    assert pd.read_csv(tmp_path / "clips" / SKIPPED_REPORT)["source_video"].tolist() == ["junk.mp4"]


def test_no_videos_is_an_error(tmp_path):
    with pytest.raises(ClipExtractionError, match=r"clips: no source videos for source 'demo'"):
        extract_clips(tmp_path, [], tmp_path / "clips", "demo", CFG, progress=False)


def test_clashing_clip_names_are_an_error(tmp_path):
    write_video(tmp_path / "a.mp4", coded(4))
    write_video(tmp_path / "a.avi", coded(4))
    with pytest.raises(ClipExtractionError, match="map to the same clip names"):
        extract_clips(tmp_path, [tmp_path / "a.mp4", tmp_path / "a.avi"], tmp_path / "clips", "d", CFG, progress=False)


def test_interrupted_write_leaves_no_clip(raw, tmp_path, monkeypatch):
    calls = []
    real = clips.resize_short_side

    def failing(frames, short_side):
        calls.append(len(frames))
        if len(calls) == 2:  # the first chunk is already in the encoder
            raise OSError("disk full")
        return real(frames, short_side)

    monkeypatch.setattr(clips, "CHUNK_FRAMES", 4)
    monkeypatch.setattr(clips, "resize_short_side", failing)
    out = tmp_path / "clips"
    with pytest.raises(OSError, match="disk full"):
        extract_clips(raw, [raw / "vid" / "a.mp4"], out, "demo", CFG, progress=False)
    assert calls == [4, 4]
    assert list(out.iterdir()) == []  # no clip, no temporary file, no manifest


def test_leftover_temporaries_are_removed(raw, tmp_path):
    out = tmp_path / "clips"
    out.mkdir()
    (out / ".b_00000.x1y2.tmp.mp4").write_bytes(b"half a clip")
    extract_clips(raw, [raw / "b.avi"], out, "demo", CFG, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["b_00000.mp4", CLIPS_MANIFEST, SKIPPED_REPORT]

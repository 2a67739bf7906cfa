"""Video I/O: exact frame access on every backend, seeking, clear errors, resizing, writing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from endofm.data import video
from endofm.data.layouts import frame_name
from endofm.data.video import (
    GOP,
    VideoDecodeError,
    VideoReader,
    probe_video,
    read_frames,
    resize_short_side,
    resized_shape,
    write_frame_folder,
    write_video,
)

N, H, W = 70, 48, 64  # 70 frames: keyframes at 0, 30, 60 in the H.264 files
STEP, BASE = 3, 8  # frame k is a solid grey of level BASE + STEP * k


def coded_frames(n: int = N, h: int = H, w: int = W) -> np.ndarray:
    levels = (BASE + STEP * np.arange(n)).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (n, h, w, 3)).copy()


def decoded_index(frames: np.ndarray) -> list[int]:
    """Which coded frame each decoded frame is (codec error is at most a level or two)."""
    return np.round((frames.reshape(len(frames), -1).mean(axis=1) - BASE) / STEP).astype(int).tolist()


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    frames = coded_frames()
    return {
        "mp4": write_video(root / "coded.mp4", frames, crf=0),
        "avi": write_video(root / "coded.avi", frames),
        "mkv": write_video(root / "coded.mkv", frames, crf=0),
        "frames": write_frame_folder(root / "coded_frames", frames, quality=95),
    }


CASES = [
    ("mp4", "auto", "decord"),
    ("mp4", "decord", "decord"),
    ("mp4", "pyav", "pyav"),
    ("avi", "decord", "decord"),
    ("avi", "pyav", "pyav"),
    ("mkv", "decord", "decord"),
    ("mkv", "pyav", "pyav"),
    ("frames", "auto", "frames"),
    ("frames", "frames", "frames"),
]


@pytest.mark.parametrize(("kind", "backend", "resolved"), CASES)
def test_decodes_exactly_the_asked_frames(sources, kind, backend, resolved):
    indices = [65, 3, 3, 31, 0, 69, 30, 29, 61, 65]  # unsorted, repeated, across keyframes
    with VideoReader(sources[kind], backend) as reader:
        assert reader.backend == resolved
        assert (reader.num_frames, len(reader), reader.height, reader.width) == (N, N, H, W)
        assert reader.fps == pytest.approx(30.0)
        frames = reader.get_frames(indices)
        assert frames.shape == (len(indices), H, W, 3) and frames.dtype == np.uint8
        assert decoded_index(frames) == indices
        expected = BASE + STEP * np.array(indices)
        assert np.abs(frames.astype(int) - expected[:, None, None, None]).max() <= 2
        # the same reader keeps working after jumping back, and with numpy / range input
        assert decoded_index(reader.get_frames(np.array([2, 1]))) == [2, 1]
        assert decoded_index(reader.get_frames(range(40, 43))) == [40, 41, 42]


@pytest.mark.parametrize(("kind", "backend"), [("mp4", "decord"), ("mp4", "pyav"), ("frames", "frames")])
def test_chunked_reading_matches_whole_video(sources, kind, backend):
    with VideoReader(sources[kind], backend) as reader:
        chunks = [reader.get_frames(np.arange(s, min(s + 16, N))) for s in range(0, N, 16)]
    assert decoded_index(np.concatenate(chunks)) == list(range(N))


def test_pyav_decodes_only_as_far_as_needed(sources, monkeypatch):
    decoded = []
    original = video._PyAVBackend._next_frame

    def counting(self, target):
        frame = original(self, target)
        decoded.append(self._pos)
        return frame

    monkeypatch.setattr(video._PyAVBackend, "_next_frame", counting)
    with VideoReader(sources["mp4"], "pyav") as reader:
        reader.get_frames([65, 5])
        # frames 0..5 from keyframe 0, then a seek to keyframe 60 and 60..65; nothing in between
        assert decoded == [*range(0, 6), *range(60, 66)]
        decoded.clear()
        for start in range(0, N, 16):  # sequential chunks: every frame decoded once, no re-seek
            reader.get_frames(range(start, min(start + 16, N)))
        assert decoded == list(range(N))


def test_probe_and_read_frames(sources):
    info = probe_video(sources["mp4"])
    assert (info.path, info.backend, info.num_frames, info.height, info.width) == (sources["mp4"], "decord", N, H, W)
    assert info.fps == pytest.approx(30.0)
    assert probe_video(sources["frames"]).backend == "frames"
    assert decoded_index(read_frames(sources["avi"], [7, 8], backend="pyav")) == [7, 8]
    with VideoReader(sources["mp4"]) as reader:
        assert reader.get_frames([]).shape == (0, H, W, 3)


def test_written_videos_have_regular_keyframes(sources):
    with av.open(str(sources["mp4"])) as container:
        keys = [i for i, packet in enumerate(container.demux(video=0)) if packet.size and packet.is_keyframe]
    assert keys == list(range(0, N, GOP))


# --- errors ---------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(VideoDecodeError, match=r"nope\.mp4: no such file or folder"):
        VideoReader(tmp_path / "nope.mp4")


def test_empty_file(tmp_path):
    (tmp_path / "empty.mp4").touch()
    with pytest.raises(VideoDecodeError, match=r"empty\.mp4: empty file \(0 bytes\)"):
        VideoReader(tmp_path / "empty.mp4")


@pytest.mark.parametrize("backend", ["auto", "decord", "pyav"])
def test_truncated_mp4(tmp_path, sources, backend):
    data = sources["mp4"].read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoDecodeError, match=r"cut\.mp4: not a readable video"):
        VideoReader(cut, backend)


@pytest.mark.parametrize("backend", ["auto", "pyav"])
def test_truncated_avi_is_detected_from_its_declared_frame_count(tmp_path, sources, backend):
    data = sources["avi"].read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoDecodeError, match=rf"cut\.avi: truncated: the container declares {N} frames but only"):
        VideoReader(cut, backend)


def test_garbage_bytes(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(VideoDecodeError, match=r"junk\.mp4: not a readable video \(.*Invalid data"):
        VideoReader(junk)


@pytest.mark.parametrize(("kind", "backend"), [("mp4", "decord"), ("mp4", "pyav"), ("frames", "frames")])
@pytest.mark.parametrize("index", [N, -1])
def test_index_out_of_range(sources, kind, backend, index):
    with VideoReader(sources[kind], backend) as reader:
        with pytest.raises(VideoDecodeError, match=rf"{sources[kind].name}: frame index {index} out of range"):
            reader.get_frames([0, index])


def test_bad_indices_and_closed_reader(sources):
    reader = VideoReader(sources["mp4"])
    with pytest.raises(TypeError, match="1-D sequence of integers"):
        reader.get_frames([0.5])
    reader.close()
    with pytest.raises(ValueError, match="reader is closed"):
        reader.get_frames([0])


def test_frame_folder_with_a_gap(tmp_path):
    folder = write_frame_folder(tmp_path / "gappy", coded_frames(5))
    (folder / frame_name(2)).unlink()
    with pytest.raises(VideoDecodeError, match=r"gappy: gap in frame numbering: img_00003\.jpg is missing"):
        VideoReader(folder)


def test_frame_folder_without_frames(tmp_path):
    (tmp_path / "hollow").mkdir()
    (tmp_path / "hollow" / "notes.txt").write_text("no frames here")
    with pytest.raises(VideoDecodeError, match=r"hollow: frame folder has no frames"):
        VideoReader(tmp_path / "hollow")


def test_unreadable_frame_is_named(tmp_path):
    folder = write_frame_folder(tmp_path / "broken", coded_frames(3))
    (folder / frame_name(1)).write_bytes(b"not a jpeg")
    with VideoReader(folder) as reader:
        assert decoded_index(reader.get_frames([0, 2])) == [0, 2]
        with pytest.raises(VideoDecodeError, match=r"img_00002\.jpg: unreadable frame"):
            reader.get_frames([1])


def test_backend_must_fit_the_source(sources):
    with pytest.raises(VideoDecodeError, match="is a folder; backend 'pyav' reads video files"):
        VideoReader(sources["frames"], "pyav")
    with pytest.raises(VideoDecodeError, match="is a file; backend 'frames' reads frame folders"):
        VideoReader(sources["mp4"], "frames")
    with pytest.raises(ValueError, match="unknown video backend 'opencv'"):
        VideoReader(sources["mp4"], "opencv")


# --- resizing and writing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hw", "short", "expected"),
    [
        ((480, 640), 256, (256, 342)),  # 341.3 -> 342 (even)
        ((640, 480), 256, (342, 256)),
        ((256, 320), 256, (256, 320)),
        ((100, 151), 50, (50, 76)),  # 75.5 -> 76
        ((90, 90), 64, (64, 64)),
        ((300, 1000), 32, (32, 106)),  # 106.7 -> 106 (nearest even)
    ],
)
def test_resized_shape(hw, short, expected):
    assert resized_shape(*hw, short) == expected
    frames = np.zeros((3, *hw, 3), np.uint8)
    out = resize_short_side(frames, short)
    assert out.shape == (3, *expected, 3) and out.dtype == np.uint8


def test_resize_keeps_values_and_antialiases():
    flat = np.full((2, 120, 160, 3), 77, np.uint8)
    assert np.array_equal(resize_short_side(flat, 60), np.full((2, 60, 80, 3), 77, np.uint8))
    same = np.zeros((1, 32, 64, 3), np.uint8)
    assert resize_short_side(same, 32) is same
    checker = ((np.indices((128, 128)).sum(axis=0) % 2) * 255).astype(np.uint8)
    small = resize_short_side(np.repeat(checker[None, ..., None], 3, axis=3), 32)
    assert abs(small.mean() - 127.5) < 2 and small.std() < 3  # averaged, not aliased to stripes
    with pytest.raises(ValueError, match="expected uint8 frames"):
        resize_short_side(np.zeros((4, 4, 3), np.uint8), 2)


def test_write_video_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="must be even"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 15, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="suffix '.gif'"):
        write_video(tmp_path / "x.gif", np.zeros((2, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="expected 16x16"):
        write_video(tmp_path / "mixed.mp4", [np.zeros((16, 16, 3), np.uint8), np.zeros((16, 32, 3), np.uint8)])
    with pytest.raises(ValueError, match="no frames to write"):
        write_video(tmp_path / "none.mp4", [])
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written left behind


_ENCODE_FOUR_VIDEOS = """
import sys
from endofm.data.synthetic import SynthConfig, plan_videos
from endofm.data.video import write_video
cfg = SynthConfig(polypdiag_videos={"train": 2, "val": 2})
for i, plan in enumerate(plan_videos("polypdiag", cfg)):
    write_video(f"{sys.argv[1]}/{i}.mp4", plan.render(cfg).frames, crf=18)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MALLOC_PERTURB_ is glibc's")
def test_written_stream_does_not_depend_on_heap_contents(tmp_path):
    """x264's mbtree read heap memory it never wrote: with it on, videos 2 and 3 of this set came out
    differently under two MALLOC_PERTURB_ fill bytes (i.e. in two processes with different heaps)."""
    streams = []
    for fill in ("77", "165"):
        out = tmp_path / fill
        out.mkdir()
        env = {**os.environ, "MALLOC_PERTURB_": fill}
        subprocess.run([sys.executable, "-c", _ENCODE_FOUR_VIDEOS, str(out)], env=env, check=True)
        streams.append([(out / f"{i}.mp4").read_bytes() for i in range(4)])
    assert streams[0] == streams[1]


def test_auto_falls_back_to_pyav_where_decord_fails(tmp_path):
    """decord 0.6 cannot copy out frames 48 px wide; "auto" then reads the file with PyAV."""
    frames = np.zeros((12, 32, 48, 3), dtype=np.uint8)
    frames[:, :, :16] = 200
    path = write_video(tmp_path / "w48.mp4", frames)
    with pytest.raises(VideoDecodeError, match="decord failed"):
        VideoReader(path, "decord").get_frames([0])
    with VideoReader(path) as reader:
        got = reader.get_frames([0, 7, 11])
        assert reader.backend == "pyav"
    assert got.shape == (3, 32, 48, 3)
    assert np.abs(got[:, :, :12].astype(int) - 200).max() < 20 and got[:, :, 20:].max() < 20


def test_single_threaded_decord_reads_the_same_frames_as_its_default(sources):
    """The reader decodes with one FFmpeg thread (faster on small clips); the pixels do not change."""
    decord = video._import_decord()
    wanted = [0, 3, 29, 30, 31, 45, 61, 69]
    default = decord.VideoReader(str(sources["mp4"]), ctx=decord.cpu(0)).get_batch(wanted).asnumpy()
    with VideoReader(sources["mp4"], "decord") as reader:
        np.testing.assert_array_equal(reader.get_frames(wanted), default)

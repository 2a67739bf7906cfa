"""PolypDiag: split parsing and its errors, the manifest, frame sampling and the clip dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from endofm.data import video
from endofm.data.benchmarks import read_manifest
from endofm.data.polypdiag import PolypDiagDataset, index_polypdiag, sample_indices, window_frames
from endofm.data.video import VideoDecodeError, write_video
from endofm.tasks.benchmarks import get_benchmark

H, W = 32, 64
LENGTHS = {"a.mp4": 24, "sub/b.avi": 10, "c.mp4": 12}


def level(k: int) -> int:
    """Grey level of frame ``k`` in every fixture video."""
    return 16 + 8 * k


def decoded_index(frames: torch.Tensor) -> list[int]:
    return ((frames.float().mean(dim=(1, 2, 3)) - 16) / 8).round().int().tolist()


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("videos_src")
    for name, n in LENGTHS.items():
        write_video(root / name, (np.full((H, W, 3), level(k), np.uint8) for k in range(n)), fps=25)
    return root


@pytest.fixture
def polypdiag(videos: Path, tmp_path: Path) -> Path:
    root = tmp_path / "PolypDiag"
    for name in LENGTHS:
        target = root / "videos" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(videos / name)
    (root / "videos" / "sub" / "b.mp4").touch()  # listed only by the duplicate-sample-id error case
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("a.mp4,1\n\n sub/b.avi , 0 \n")
    (root / "splits" / "val.txt").write_text("c.mp4,1\r\n")
    return root


def test_index(polypdiag: Path) -> None:
    m = index_polypdiag(polypdiag)
    assert list(m.columns) == ["split", "sample_id", "path", "label", "num_frames", "fps", "height", "width"]
    assert m["split"].tolist() == ["train", "train", "val"]
    assert m["sample_id"].tolist() == ["a", "sub/b", "c"]
    assert m["path"].tolist() == ["videos/a.mp4", "videos/sub/b.avi", "videos/c.mp4"]
    assert m["label"].tolist() == [1, 0, 1]
    assert m["num_frames"].tolist() == [24, 10, 12]
    assert m["fps"].tolist() == [25.0] * 3
    assert (m["height"] == H).all() and (m["width"] == W).all()


@pytest.mark.parametrize(
    ("text", "error", "match"),
    [
        ("a.mp4,1\na.mp4 1\n", ValueError, r"train.txt:2: expected '<video path>,<label>', got 1 field"),
        ("a.mp4,1,x\n", ValueError, r"train.txt:1: expected .* got 3 field"),
        ("\n\na.mp4,2\n", ValueError, r"train.txt:3: label must be 0 \(normal\) or 1 \(abnormal\), got '2'"),
        ("a.mp4,\n", ValueError, r"train.txt:1: label must be 0"),
        ("a.mp4,1\nc.mp4,0\na.mp4,1\n", ValueError, r"train.txt:3: video 'a.mp4' already listed on line 1"),
        (
            "a.mp4,1\nsub/b.avi,0\nsub/b.mp4,1\n",
            ValueError,
            r"train.txt:3: 'sub/b.mp4' has the same sample id as 'sub/b.avi' on line 2",
        ),
        ("a.mp4,1\nmissing.mp4,0\n", FileNotFoundError, r"train.txt:2: video .*videos/missing.mp4 does not exist"),
        ("../splits/val.txt,0\n", ValueError, r"train.txt:1: video path must be relative and inside"),
        ("/etc/passwd,0\n", ValueError, r"train.txt:1: video path must be relative"),
        ("\n \n", ValueError, r"train.txt: no videos listed"),
    ],
)
def test_split_errors(polypdiag: Path, text: str, error: type, match: str) -> None:
    (polypdiag / "splits" / "train.txt").write_text(text)
    with pytest.raises(error, match=match):
        index_polypdiag(polypdiag)


def test_missing_split_and_bad_video(polypdiag: Path) -> None:
    (polypdiag / "videos" / "broken.mp4").write_bytes(b"not a video at all" * 10)
    (polypdiag / "splits" / "val.txt").write_text("c.mp4,1\nbroken.mp4,0\n")
    with pytest.raises(VideoDecodeError, match=r"val.txt:2: .*broken.mp4"):
        index_polypdiag(polypdiag)
    (polypdiag / "splits" / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"splits/val.txt: PolypDiag split file not found"):
        index_polypdiag(polypdiag)


def test_sample_indices() -> None:
    assert sample_indices(24, 8).tolist() == [0, 3, 6, 9, 13, 16, 19, 23]
    assert sample_indices(24, 8, window=8).tolist() == list(range(8))
    assert sample_indices(24, 4, window=100, short_video="spread").tolist() == [0, 7, 15, 23]
    assert sample_indices(3, 6).tolist() == [0, 0, 0, 1, 1, 2]  # short video: floor(linspace) repeats
    starts = set()
    for s in range(30):
        idx = sample_indices(24, 4, "random", window=8, rng=np.random.default_rng(s))
        assert (np.diff(idx) >= 2).all() and idx[-1] - idx[0] == 7 and 0 <= idx[0] <= 16
        starts.add(int(idx[0]))
    assert len(starts) > 5
    with pytest.raises(ValueError, match="random sampling needs a window"):
        sample_indices(24, 4, "random", rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="sampling must be 'uniform' or 'random'"):
        sample_indices(24, 4, "dense")


def test_short_video_clamps_to_its_last_frame_as_the_original() -> None:
    """100 frames, the 256-frame window: floor(linspace(0, 255, 8)) = 0, 36, 72, 109, 145, 182, 218, 255,
    clamped to frame 99. The spread rule: floor(linspace(0, 99, 8)) = 0, 14, 28, 42, 56, 70, 84, 99."""
    assert sample_indices(100, 8, window=256).tolist() == [0, 36, 72, 99, 99, 99, 99, 99]
    assert sample_indices(100, 8, window=256, short_video="spread").tolist() == [0, 14, 28, 42, 56, 70, 84, 99]
    rng = np.random.default_rng(0)
    for rule in ("clamp", "spread"):  # a short video has one window, starting at frame 0
        random = sample_indices(100, 8, "random", window=256, rng=rng, short_video=rule)
        assert random.tolist() == sample_indices(100, 8, window=256, short_video=rule).tolist()
    # Long videos: both rules agree.
    assert sample_indices(300, 8, window=256).tolist() == [0, 36, 72, 109, 145, 182, 218, 255]
    assert sample_indices(300, 8, window=256, short_video="spread").tolist() == [0, 36, 72, 109, 145, 182, 218, 255]


def test_window_scales_with_the_frame_rate() -> None:
    """256 frames at 30 fps is 204.8 frames at 24 fps: floor(linspace(0, 203.8, 8)), step 29.114."""
    assert window_frames(256, 24.0, 30.0) == pytest.approx(204.8) and window_frames(256, 24.0, None) == 256
    assert sample_indices(1000, 8, window=204.8).tolist() == [0, 29, 58, 87, 116, 145, 174, 203]
    for s in range(20):  # a random window of 204.8 frames starts in [0, 795]
        idx = sample_indices(1000, 8, "random", window=204.8, rng=np.random.default_rng(s))
        assert (idx - idx[0]).tolist() == [0, 29, 58, 87, 116, 145, 174, 203] and 0 <= idx[0] <= 795


def test_dataset_window_follows_each_videos_fps(polypdiag: Path) -> None:
    """a.mp4 has 24 frames at 25 fps: a 16-frame window at 30 fps is 13.33 of its frames,
    floor(linspace(0, 12.33, 4)) = 0, 4, 8, 12; at a manifest fps of 15 it is 8 frames: 0, 2, 4, 7."""
    m = index_polypdiag(polypdiag)
    assert m.loc[0, "sample_id"] == "a" and m.loc[0, "fps"] == pytest.approx(25)
    assert PolypDiagDataset(m, polypdiag, "train", num_frames=4, window=16, window_fps=30)[0]["indices"] == [
        0,
        4,
        8,
        12,
    ]
    m.loc[0, "fps"] = 15.0
    assert PolypDiagDataset(m, polypdiag, "train", num_frames=4, window=16, window_fps=30)[0]["indices"] == [0, 2, 4, 7]
    assert PolypDiagDataset(m, polypdiag, "train", num_frames=4, window=16)[0]["indices"] == [0, 5, 10, 15]
    m.loc[0, "fps"] = 0.0
    with pytest.raises(ValueError, match=r"a.mp4: the manifest's fps is '0.0'"):
        PolypDiagDataset(m, polypdiag, "train", num_frames=4, window=16, window_fps=30)


def test_dataset_decodes_exactly_the_sampled_frames(polypdiag: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    requested: list[list[int]] = []
    original = video.VideoReader.get_frames

    def spy(self, indices):
        requested.append(np.asarray(indices).tolist())
        return original(self, indices)

    monkeypatch.setattr(video.VideoReader, "get_frames", spy)
    m = index_polypdiag(polypdiag)
    ds = PolypDiagDataset(m, polypdiag, "train", num_frames=4, window=16)
    assert len(ds) == 2
    item = ds[0]
    assert item["indices"] == [0, 5, 10, 15] and requested == [[0, 5, 10, 15]]
    assert item["frames"].shape == (4, H, W, 3) and item["frames"].dtype == torch.uint8
    assert decoded_index(item["frames"]) == item["indices"]
    assert item["label"] == 1 and item["sample_id"] == "a"
    item = ds[1]  # sub/b.avi has 10 frames (< window): linspace(0, 15, 4) clamped to frame 9
    assert item["indices"] == [0, 5, 9, 9] and decoded_index(item["frames"]) == [0, 5, 9, 9]
    assert item["label"] == 0 and item["sample_id"] == "sub/b"
    spread = PolypDiagDataset(m, polypdiag, "train", num_frames=4, window=16, short_video="spread")[1]
    assert spread["indices"] == [0, 3, 6, 9] and decoded_index(spread["frames"]) == [0, 3, 6, 9]

    val = PolypDiagDataset(m, polypdiag, "val", num_frames=3, transform=lambda d: {**d, "label": -d["label"]})
    assert val[0]["label"] == -1 and val[0]["indices"] == [0, 5, 11]


def test_dataset_random_is_reproducible(polypdiag: Path) -> None:
    m = index_polypdiag(polypdiag)
    ds = PolypDiagDataset(m, polypdiag, "train", num_frames=4, sampling="random", window=8, seed=3)
    first = ds[0]
    assert decoded_index(first["frames"]) == first["indices"]
    assert first["indices"][-1] - first["indices"][0] == 7
    assert (
        PolypDiagDataset(m, polypdiag, "train", num_frames=4, sampling="random", window=8, seed=3)[0]["indices"]
        == first["indices"]
    )
    by_epoch = set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        by_epoch.add(tuple(ds[0]["indices"]))
    assert len(by_epoch) > 3
    with pytest.raises(ValueError, match="random sampling needs a window"):
        PolypDiagDataset(m, polypdiag, "train", sampling="random")
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'val'\)"):
        PolypDiagDataset(m, polypdiag, "test")


def test_dataset_detects_stale_manifest(polypdiag: Path) -> None:
    m = index_polypdiag(polypdiag)
    m.loc[0, "num_frames"] = 30
    with pytest.raises(ValueError, match=r"a.mp4: has 24 frames but the manifest says 30; re-index"):
        PolypDiagDataset(m, polypdiag, "train")[0]


def test_build_manifest_polypdiag(polypdiag: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = get_benchmark("polypdiag").index(polypdiag, out)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.csv", "manifest.json"]
    assert json.loads((out / "manifest.json").read_text()) == summary
    assert summary["benchmark"] == "polypdiag" and summary["raw_dir"] == str(polypdiag)
    assert summary["splits"] == {
        "train": {"videos": 2, "labels": {"normal": 1, "abnormal": 1}, "frames": 34},
        "val": {"videos": 1, "labels": {"normal": 0, "abnormal": 1}, "frames": 12},
    }
    assert any("val is the official test split" in note for note in summary["notes"])
    back = read_manifest(out / "manifest.csv")
    assert back.equals(index_polypdiag(polypdiag))
    assert PolypDiagDataset(back, polypdiag, "train", num_frames=2)[1]["sample_id"] == "sub/b"

    (polypdiag / "splits" / "val.txt").write_text("nope.mp4,1\n")
    with pytest.raises(FileNotFoundError, match="val.txt:1"):
        get_benchmark("polypdiag").index(polypdiag, out)
    assert (out / "manifest.csv").exists() and (out / "manifest.json").exists()  # the old outputs survive
    with pytest.raises(FileNotFoundError, match="raw polypdiag folder not found"):
        get_benchmark("polypdiag").index(tmp_path / "absent", out)

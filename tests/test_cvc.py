"""CVC: official sequence lists, videolist.txt parsing, the mask rule, indexing and the dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from endofm.data.benchmarks import read_manifest
from endofm.data.cvc import (
    OFFICIAL_TEST,
    OFFICIAL_TRAIN,
    CVCSequenceDataset,
    Sequence,
    index_cvc,
    read_image,
    read_mask,
    read_sequences,
)
from endofm.tasks.benchmarks import get_benchmark

H, W = 6, 8
OVERLAPPING_STARTS = {51, 429, 178, 253, 343, 68, 200}


def image_of(i: int) -> np.ndarray:
    """Frame ``i`` encodes its number in the red and green channels."""
    image = np.full((H, W, 3), 7, np.uint8)
    image[..., 0], image[..., 1] = i % 256, i // 256
    return image


def mask_of(i: int) -> np.ndarray:
    """``i % 4`` pixels at 255; border-like greys (254, 128, 1) that the official rule maps to 0."""
    mask = np.zeros((H, W), np.uint8)
    mask.flat[: i % 4] = 255
    mask[-1, :3] = (254, 128, 1)
    return mask


def make_cvc(root: Path, numbers) -> Path:
    (root / "CVC-ClinicDB" / "Original").mkdir(parents=True, exist_ok=True)
    (root / "CVC-ClinicDB" / "Ground Truth").mkdir(parents=True, exist_ok=True)
    for i in numbers:
        tifffile.imwrite(root / "CVC-ClinicDB" / "Original" / f"{i}.tif", image_of(i))
        tifffile.imwrite(root / "CVC-ClinicDB" / "Ground Truth" / f"{i}.tif", mask_of(i))
    return root


@pytest.fixture(scope="module")
def clinicdb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cvc(tmp_path_factory.mktemp("cvc"), range(1, 613))


def test_official_lists() -> None:
    assert (len(OFFICIAL_TRAIN), sum(n for _, n in OFFICIAL_TRAIN)) == (20, 401)
    assert (len(OFFICIAL_TEST), sum(n for _, n in OFFICIAL_TEST)) == (9, 171)
    assert {s for s, _ in OFFICIAL_TEST} & {s for s, _ in OFFICIAL_TRAIN} == OVERLAPPING_STARTS


def test_index_official(clinicdb: Path) -> None:
    sequences = read_sequences(clinicdb)  # no videolist.txt: the hard-coded lists
    assert [s.split for s in sequences] == ["train"] * 20 + ["test"] * 9
    assert sequences[0] == Sequence("104-126", 104, 23, "train")
    m = index_cvc(clinicdb)
    assert m.groupby("split", sort=False).size().to_dict() == {"train": 401, "test": 171}
    assert m.groupby("split", sort=False)["sequence"].nunique().to_dict() == {"train": 20, "test": 9}
    first = m.iloc[0]
    assert first[["sequence", "frame_index", "frame_number", "image", "mask"]].tolist() == [
        "104-126", 0, 104, "CVC-ClinicDB/Original/104.tif", "CVC-ClinicDB/Ground Truth/104.tif",
    ]  # fmt: skip
    seq = m[(m["split"] == "test") & (m["sequence"] == "001-025")]
    assert seq["frame_number"].tolist() == list(range(1, 26)) and seq["frame_index"].tolist() == list(range(25))
    assert (m["height"] == H).all() and (m["width"] == W).all()
    assert (m["polyp_pixels"] == m["frame_number"] % 4).all()  # only exact 255 counts
    # The 7 shared sequences (121 frames) are flagged in both splits, nothing else is.
    starts = m.groupby(["split", "sequence"], sort=False)["frame_number"].min()
    flagged = m.groupby(["split", "sequence"], sort=False)["overlaps_other_split"].agg(["all", "any"])
    for key, start in starts.items():
        assert flagged.loc[key].tolist() == [start in OVERLAPPING_STARTS] * 2, key
    assert m.groupby("split")["overlaps_other_split"].sum().to_dict() == {"test": 121, "train": 121}


def test_mask_rule_and_image_reading(tmp_path: Path) -> None:
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, np.array([[0, 1, 128], [254, 255, 255]], np.uint8))
    mask = read_mask(path)
    assert mask.dtype == np.uint8 and mask.tolist() == [[0, 0, 0], [0, 1, 1]]
    tifffile.imwrite(path, np.stack([np.array([[255, 3]], np.uint8)] * 3, axis=-1))  # RGB copy of a mask
    assert read_mask(path).tolist() == [[1, 0]]
    tifffile.imwrite(path, np.array([[100, 300], [500, 100]], np.uint16))  # grey 16-bit: min-max, to RGB
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape == (2, 2, 3)
    assert image[..., 0].tolist() == [[0, 128], [255, 0]] and (image[..., 2] == image[..., 0]).all()


def test_videolist(tmp_path: Path) -> None:
    root = make_cvc(tmp_path, range(1, 25))
    lines = [f"seq{k} {k} 1" for k in range(1, 22)] + ["", "seq22 22 3"]
    (root / "videolist.txt").write_text("\n".join(lines) + "\n")
    sequences = read_sequences(root)  # no split column: first 20 lines train, rest test
    assert [s.split for s in sequences] == ["train"] * 20 + ["test"] * 2
    assert sequences[-1] == Sequence("seq22", 22, 3, "test")
    m = index_cvc(root)
    assert m[m["split"] == "test"]["frame_number"].tolist() == [21, 22, 23, 24]
    assert not m["overlaps_other_split"].any()

    (root / "videolist.txt").write_text("a 1 3 train\nb 3 2 test\n\nc 10 1 test\n")
    m = index_cvc(root)
    assert [s.name for s in read_sequences(root)] == ["a", "b", "c"]
    assert m["overlaps_other_split"].tolist() == [False, False, True, True, False, False]
    ds = CVCSequenceDataset(m, root, "test")
    assert [ds[i]["sequence"] for i in range(len(ds))] == ["b", "c"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a 1 3 train\nb 3\n", r"videolist.txt:2: expected '<name> <start> <length> \[train\|test\]'"),
        ("a 1 3 train\n\nb x 2 test\n", r"videolist.txt:3: start and length must be integers"),
        ("a 0 3 train\n", r"videolist.txt:1: start and length must be >= 1"),
        ("a 1 3 valid\n", r"videolist.txt:1: split must be one of \('train', 'test'\), got 'valid'"),
        ("a 1 3 train\nb 4 2\n", r"videolist.txt:2: either every line has a split column or none does"),
        ("a 1 3 test\nb 4 2 test\na 7 1 test\n", r"videolist.txt:3: sequence 'a' already in test on line 1"),
        ("a 1 3\nb 4 2\n", r"videolist.txt: without a split column .* lists only 2 sequences"),
        ("\n\n", r"videolist.txt: no sequences listed"),
    ],
)
def test_videolist_errors(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "videolist.txt").write_text(text)
    with pytest.raises(ValueError, match=match):
        read_sequences(tmp_path)


def test_missing_files_name_path_and_sequence(tmp_path: Path) -> None:
    root = make_cvc(tmp_path, range(1, 6))
    (root / "videolist.txt").write_text("a 1 3 train\nb 3 3 test\n")
    (root / "CVC-ClinicDB" / "Ground Truth" / "5.tif").unlink()
    with pytest.raises(FileNotFoundError, match=r"Ground Truth/5.tif: mask of frame 5 of test sequence 'b'"):
        index_cvc(root)
    (root / "CVC-ClinicDB" / "Original" / "2.tif").unlink()
    with pytest.raises(FileNotFoundError, match=r"Original/2.tif: image of frame 2 of train sequence 'a'"):
        index_cvc(root)


def test_dataset_items(tmp_path: Path) -> None:
    root = make_cvc(tmp_path, range(1, 10))
    (root / "videolist.txt").write_text("a 2 4 train\nb 6 2 train\nc 8 2 test\n")
    ds = CVCSequenceDataset(index_cvc(root), root, "train")
    assert len(ds) == 2
    item = ds[0]
    assert item["sequence"] == "a"
    assert item["frames"].shape == (4, H, W, 3) and item["frames"].dtype == torch.uint8
    assert item["masks"].shape == (4, H, W) and item["masks"].dtype == torch.uint8
    assert item["frames"][:, 0, 0, 0].tolist() == [2, 3, 4, 5]
    assert torch.equal(item["frames"][1], torch.from_numpy(image_of(3)))
    assert set(item["masks"].unique().tolist()) <= {0, 1}
    assert item["masks"].sum(dim=(1, 2)).tolist() == [2, 3, 0, 1]
    flipped = CVCSequenceDataset(
        index_cvc(root), root, "test", transform=lambda d: {**d, "frames": d["frames"].flip(2)}
    )
    assert torch.equal(flipped[0]["frames"][0], torch.from_numpy(image_of(8)).flip(1))
    with pytest.raises(ValueError, match="split must be one of"):
        CVCSequenceDataset(index_cvc(root), root, "val")


def test_build_manifest_cvc(clinicdb: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = get_benchmark("cvc12k").index(clinicdb, out)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.csv", "manifest.json"]
    assert json.loads((out / "manifest.json").read_text()) == summary
    assert summary["rows"] == 572
    assert summary["splits"]["train"]["sequences"] == 20 and summary["splits"]["train"]["frames"] == 401
    assert summary["splits"]["test"]["frames_in_other_split"] == 121
    expected_with_polyp = sum(n % 4 != 0 for s, k in OFFICIAL_TEST for n in range(s, s + k))
    assert summary["splits"]["test"]["frames_with_polyp"] == expected_with_polyp
    back = read_manifest(out / "manifest.csv")
    assert back.equals(index_cvc(clinicdb))
    assert CVCSequenceDataset(back, clinicdb, "test")[3]["frames"].shape == (25, H, W, 3)
    with pytest.raises(ValueError, match=r"unknown benchmark 'cvc'; known: polypdiag, cvc12k, kumc"):
        get_benchmark("cvc").index(clinicdb, out)

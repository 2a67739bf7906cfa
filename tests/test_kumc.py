"""KUMC: VOC parsing, indexing both raw layouts, COCO export (loaded by pycocotools), the dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from endofm.data.benchmarks import read_manifest
from endofm.data.kumc import KUMCDataset, index_kumc, parse_voc, to_coco, voc_to_xyxy
from endofm.tasks.benchmarks import get_benchmark

W, H = 32, 24


def voc(folder: str, filename: str, objects=(), size=(W, H)) -> str:
    objs = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
        f"<bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for n, a, b, c, d in objects
    )
    return (
        f"<annotation><folder>{folder}</folder><filename>{filename}</filename><path>/x/{filename}</path>"
        f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
        f"<segmented>0</segmented>{objs}</annotation>"
    )


def jpeg(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((H, W, 3), value, np.uint8)).save(path, quality=95)


def xml(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


ADENOMA = ("adenomatous", 11, 6, 20, 15)  # -> xyxy [10, 5, 20, 15] -> COCO [10, 5, 10, 10], area 100
HYPER = ("hyperplastic", 1, 1, 32, 24)  # the whole image -> [0, 0, 32, 24]


@pytest.fixture
def kumc(tmp_path: Path) -> Path:
    """train2019 flat (videos '7': 2, 9, 10 and '12': 1, 3); val2019 and test2019 per video."""
    root = tmp_path / "KUMC"
    train = root / "train2019"
    for number, video, objects in [(2, "7", [ADENOMA]), (9, "7", []), (10, "7", [HYPER]), (1, "12", [ADENOMA]),
                                   (3, "12", [ADENOMA, HYPER])]:  # fmt: skip
        jpeg(train / "Image" / f"{number}.jpg", 20 * number)
        xml(train / "Annotation" / f"{number}.xml", voc(video, f"{number}.jpg", objects))
    val = root / "val2019"
    for number in (1, 2, 3, 10):  # frames 1 and 3 have no XML: unannotated
        jpeg(val / "Image" / "1" / f"{number}.jpg", 20 * number)
    xml(val / "Annotation" / "1" / "2.xml", voc("1", "2.jpg", [ADENOMA]))
    xml(val / "Annotation" / "1" / "10.xml", voc("1", "10.jpg", [HYPER, ADENOMA]))
    for number in (5, 6):
        jpeg(val / "Image" / "2" / f"{number}.jpg", 20 * number)
    xml(val / "Annotation" / "2" / "5.xml", voc("2", "5.jpg", [HYPER]))
    xml(val / "Annotation" / "2" / "6.xml", voc("2", "6.jpg", []))  # polyp-free
    jpeg(root / "test2019" / "Image" / "3" / "1.jpg", 20)
    xml(root / "test2019" / "Annotation" / "3" / "1.xml", voc("3", "1.jpg", [ADENOMA]))
    return root


def test_parse_voc_and_box_convention(tmp_path: Path) -> None:
    path = tmp_path / "a.xml"
    xml(path, voc("v", "4.jpg", [ADENOMA, HYPER]))
    ann = parse_voc(path)
    assert ann == {
        "folder": "v",
        "filename": "4.jpg",
        "width": W,
        "height": H,
        "objects": [("adenomatous", 11, 6, 20, 15), ("hyperplastic", 1, 1, 32, 24)],
        "clipped": 0,
    }
    assert voc_to_xyxy(11, 6, 20, 15) == [10.0, 5.0, 20.0, 15.0]
    assert voc_to_xyxy(1, 1, 32, 24) == [0.0, 0.0, 32.0, 24.0]
    xml(path, voc("v", "4.jpg", []))
    assert parse_voc(path)["objects"] == []


def test_boxes_past_the_image_are_clipped_and_counted(tmp_path: Path, kumc: Path, caplog) -> None:
    path = tmp_path / "a.xml"
    xml(path, voc("v", "1.jpg", [("adenomatous", 0, 1, 33, 24), ("hyperplastic", 2, 3, 4, 5)]))
    parsed = parse_voc(path)
    assert parsed["objects"] == [("adenomatous", 1.0, 1.0, 32.0, 24.0), ("hyperplastic", 2.0, 3.0, 4.0, 5.0)]
    assert parsed["clipped"] == 1
    first = kumc / "train2019/Annotation/1.xml"  # video '12', frame 1
    xml(first, voc("12", "1.jpg", [("adenomatous", 1, 1, 35, 24)]))  # 3 px past the 32 px wide image
    with caplog.at_level("WARNING", logger="endofm.data.kumc"):
        rows = index_kumc(kumc)
    assert (
        f"KUMC: 1 box(es) in 1 annotation file(s) extended past their image and were clipped to it (first: {first})"
        in caplog.text
    )
    row = rows[rows["annotation"] == first.relative_to(kumc).as_posix()].iloc[0]
    assert json.loads(row["boxes"]) == [[0.0, 0.0, 32.0, 24.0]]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("<annotation><folder>v</folder>", "a.xml: malformed XML"),
        ("<foo/>", r"a.xml: root element is <foo>"),
        (voc("v", "1.jpg").replace("<size>", "<sz>").replace("</size>", "</sz>"), r"a.xml: missing <size>"),
        (voc("v", "1.jpg").replace("<width>32</width>", ""), r"a.xml: missing or empty <width> in <size>"),
        (voc("", "1.jpg"), r"a.xml: missing or empty <folder>"),
        (voc("v", "1.jpg", [("polyp", 1, 1, 2, 2)]), r"a.xml: unknown class 'polyp' in <object> 1"),
        (voc("v", "1.jpg", [ADENOMA, ("adenomatous", 5, 1, 4, 2)]), r"a.xml: inverted box in <object> 2"),
        (
            voc("v", "1.jpg", [("adenomatous", 33, 1, 40, 2)]),
            r"a.xml: box in <object> 1 .* lies outside the 32x24 image",
        ),
        (voc("v", "1.jpg", [("adenomatous", -5, 1, 0, 2)]), r"a.xml: box in <object> 1 .* lies outside"),
        (voc("v", "1.jpg", [("adenomatous", "x", 1, 3, 2)]), r"a.xml: <xmin> in <object> 1 must be a number"),
    ],
)
def test_parse_voc_errors(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "a.xml"
    xml(path, text)
    with pytest.raises(ValueError, match=match):
        parse_voc(path)


def test_index_kumc(kumc: Path) -> None:
    m = index_kumc(kumc)
    assert list(m.columns) == [
        "split", "video", "frame", "image", "annotation", "annotated", "boxes", "labels", "width", "height",
    ]  # fmt: skip
    assert m.groupby("split", sort=False).size().to_dict() == {"train": 5, "val": 6, "test": 1}
    train = m[m["split"] == "train"]
    # Videos in numeric order ('7' before '12'), frames renumbered 1.. after a numeric sort of file numbers.
    assert train["video"].tolist() == ["7", "7", "7", "12", "12"]
    assert train["frame"].tolist() == [1, 2, 3, 1, 2]
    assert train["image"].tolist() == [f"train2019/Image/{n}.jpg" for n in (2, 9, 10, 1, 3)]
    assert train["annotation"].tolist() == [f"train2019/Annotation/{n}.xml" for n in (2, 9, 10, 1, 3)]
    assert train["annotated"].all()
    assert [json.loads(b) for b in train["boxes"]] == [
        [[10, 5, 20, 15]], [], [[0, 0, 32, 24]], [[10, 5, 20, 15]], [[10, 5, 20, 15], [0, 0, 32, 24]],
    ]  # fmt: skip
    assert [json.loads(b) for b in train["labels"]] == [[1], [], [2], [1], [1, 2]]
    val = m[m["split"] == "val"]
    assert val["video"].tolist() == ["1"] * 4 + ["2"] * 2
    assert val["frame"].tolist() == [1, 2, 3, 4, 1, 2]
    assert val["image"].tolist()[3] == "val2019/Image/1/10.jpg"
    assert val["annotated"].tolist() == [False, True, False, True, True, True]
    assert val["annotation"].tolist() == ["", "val2019/Annotation/1/2.xml", "", "val2019/Annotation/1/10.xml",
                                          "val2019/Annotation/2/5.xml", "val2019/Annotation/2/6.xml"]  # fmt: skip
    assert [json.loads(b) for b in val["labels"]] == [[], [1], [], [2, 1], [2], []]
    assert (m["width"] == W).all() and (m["height"] == H).all()


def test_index_kumc_errors(kumc: Path) -> None:
    (kumc / "val2019" / "Annotation" / "2" / "7.xml").write_text(voc("2", "7.jpg"))
    with pytest.raises(FileNotFoundError, match=r"Annotation/2/7.xml: annotation without its image .*Image/2/7.jpg"):
        index_kumc(kumc)
    (kumc / "val2019" / "Annotation" / "2" / "7.xml").unlink()

    jpeg(kumc / "train2019" / "Image" / "4.jpg", 0)
    with pytest.raises(ValueError, match=r"train2019/Image/4.jpg: no annotation; in the flat train split"):
        index_kumc(kumc)
    (kumc / "train2019" / "Image" / "4.jpg").unlink()

    jpeg(kumc / "val2019" / "Image" / "1" / "frame.jpg", 0)
    with pytest.raises(ValueError, match=r"Image/1/frame.jpg: unexpected entry; expected files named <n>.jpg"):
        index_kumc(kumc)
    (kumc / "val2019" / "Image" / "1" / "frame.jpg").unlink()

    jpeg(kumc / "val2019" / "Image" / "4.jpg", 0)
    with pytest.raises(ValueError, match=r"val2019/Image/4.jpg: unexpected file; this split keeps one folder per"):
        index_kumc(kumc)
    (kumc / "val2019" / "Image" / "4.jpg").unlink()

    xml(kumc / "val2019" / "Annotation" / "9" / "1.xml", voc("9", "1.jpg"))
    with pytest.raises(FileNotFoundError, match=r"Annotation/9: annotation folder without an image folder"):
        index_kumc(kumc)
    (kumc / "val2019" / "Annotation" / "9" / "1.xml").unlink()
    (kumc / "val2019" / "Annotation" / "9").rmdir()

    xml(kumc / "test2019" / "Annotation" / "3" / "1.xml", voc("3", "1.jpg", size=(64, 48)))
    with pytest.raises(ValueError, match=r"3/1.xml: <size> 64x48 differs from the image .*1.jpg 32x24"):
        index_kumc(kumc)
    xml(kumc / "test2019" / "Annotation" / "3" / "1.xml", voc("3", "1.jpg", [("polyp", 1, 1, 2, 2)]))
    with pytest.raises(ValueError, match=r"test2019/Annotation/3/1.xml: unknown class 'polyp'"):
        index_kumc(kumc)
    for p in sorted((kumc / "test2019").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (kumc / "test2019").rmdir()
    with pytest.raises(FileNotFoundError, match=r"test2019: KUMC split folder not found"):
        index_kumc(kumc)


def test_to_coco_loads_in_pycocotools(kumc: Path, tmp_path: Path) -> None:
    m = index_kumc(kumc)
    coco = to_coco(m, "val")
    assert [im["file_name"] for im in coco["images"]] == [
        "val2019/Image/1/2.jpg", "val2019/Image/1/10.jpg", "val2019/Image/2/5.jpg", "val2019/Image/2/6.jpg",
    ]  # fmt: skip
    assert [im["id"] for im in coco["images"]] == [1, 2, 3, 4]
    first = coco["annotations"][0]
    assert first == {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 5, 10, 10], "area": 100, "iscrowd": 0}
    assert coco["annotations"][1]["bbox"] == [0, 0, 32, 24] and coco["annotations"][1]["area"] == 768
    assert coco["categories"] == [{"id": 1, "name": "adenomatous"}, {"id": 2, "name": "hyperplastic"}]

    path = tmp_path / "coco_val.json"
    path.write_text(json.dumps(coco))
    api = COCO(str(path))
    assert len(api.getImgIds()) == 4 and len(api.getAnnIds()) == 4
    assert api.getCatIds() == [1, 2]
    assert [len(api.getAnnIds(imgIds=[i])) for i in (1, 2, 3, 4)] == [1, 2, 1, 0]  # image 4 is polyp-free
    assert len(api.getAnnIds(catIds=[2])) == 2
    assert api.loadAnns(api.getAnnIds(imgIds=[2]))[1]["bbox"] == [10, 5, 10, 10]
    with pytest.raises(ValueError, match="split must be one of"):
        to_coco(m, "valid")


def test_dataset_reference_frames_clamped(kumc: Path) -> None:
    m = index_kumc(kumc)
    ds = KUMCDataset(m, kumc, "val", ref_offsets=(3, -2, 1))
    assert len(ds) == 4  # annotated frames only
    item = ds[0]  # val video 1, file 2.jpg = position 1 of [1, 2, 3, 10]
    assert item["indices"] == [0, 1, 2, 3] and item["key_index"] == 1
    assert item["frames"].shape == (4, H, W, 3) and item["frames"].dtype == torch.uint8
    means = item["frames"].float().mean(dim=(1, 2, 3))
    assert torch.allclose(means, torch.tensor([20.0, 40.0, 60.0, 200.0]), atol=2)
    assert item["boxes"].dtype == torch.float32 and item["boxes"].tolist() == [[10, 5, 20, 15]]
    assert item["labels"].dtype == torch.int64 and item["labels"].tolist() == [1]
    assert item["image_id"] == 1 and item["video"] == "1"

    item = ds[1]  # 10.jpg, the last frame: every later reference clamps to it
    assert item["indices"] == [1, 3, 3, 3]
    assert item["labels"].tolist() == [2, 1] and item["boxes"].shape == (2, 4)
    item = ds[3]  # polyp-free frame: empty targets with the right shapes
    assert item["boxes"].shape == (0, 4) and item["labels"].shape == (0,)
    assert item["indices"] == [0, 1, 1, 1]

    single = KUMCDataset(m, kumc, "train")[0]
    assert single["frames"].shape == (1, H, W, 3) and single["key_index"] == 0 and single["indices"] == [0]
    assert KUMCDataset(m, kumc, "val", ref_offsets=(-5,))[0]["indices"] == [0, 1]
    with pytest.raises(ValueError, match="distinct and non-zero"):
        KUMCDataset(m, kumc, "val", ref_offsets=(0, 1))


def test_build_manifest_kumc(kumc: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = get_benchmark("kumc").index(kumc, out)
    assert sorted(p.name for p in out.iterdir()) == [
        "coco_test.json", "coco_train.json", "coco_val.json", "manifest.csv", "manifest.json",
    ]  # fmt: skip
    assert json.loads((out / "manifest.json").read_text()) == summary
    assert summary["benchmark"] == "kumc" and summary["raw_dir"] == str(kumc) and summary["rows"] == 12
    assert summary["splits"]["val"] == {
        "videos": 2,
        "frames": 6,
        "annotated_frames": 4,
        "polyp_free_frames": 1,
        "boxes": {"adenomatous": 2, "hyperplastic": 2},
    }
    assert summary["splits"]["train"]["boxes"] == {"adenomatous": 3, "hyperplastic": 2}
    assert any("val2019" in note for note in summary["notes"])
    assert len(COCO(str(out / "coco_train.json")).getImgIds()) == 5

    back = read_manifest(out / "manifest.csv")
    assert back.equals(index_kumc(kumc))
    assert KUMCDataset(back, kumc, "val", ref_offsets=(1,))[1]["indices"] == [3, 3]

"""KUMC (PolypsSet) polyp detection: index the raw release, export COCO, serve key + reference frames.

Box convention (the one place it is defined): Pascal-VOC ``xmin..xmax`` are 1-based inclusive pixel
indices; internally boxes are 0-based continuous ``[x0, y0, x1, y1]`` with ``x0 = xmin - 1`` and
``x1 = xmax`` (so width = ``xmax - xmin + 1``); COCO ``bbox`` is ``[x0, y0, x1 - x0, y1 - y0]``.

Class ids follow the official detector: 0 background, 1 adenomatous, 2 hyperplastic. The paper
reports ``val`` (``val2019``) as its test set.

Layer: data and models (docs/architecture.md). May import: foundation and the other data modules.
"""

from __future__ import annotations

import json
import logging
import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from endofm.data.layouts import KUMCLayout

COLUMNS = ("split", "video", "frame", "image", "annotation", "annotated", "boxes", "labels", "width", "height")
log = logging.getLogger(__name__)
#: Class name -> id (0 is background).
CLASS_IDS = {name: i for i, name in enumerate(KUMCLayout.CLASSES, start=1)}


def _text(node: ET.Element, tag: str, path: Path, where: str = "") -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise ValueError(f"{path}: missing or empty <{tag}>{where}")
    return child.text.strip()


def _number(node: ET.Element, tag: str, path: Path, where: str = "") -> float:
    text = _text(node, tag, path, where)
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{path}: <{tag}>{where} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{path}: <{tag}>{where} must be a finite number, got {text!r}")
    return value


def parse_voc(xml_path: str | Path) -> dict[str, Any]:
    """Read one Pascal-VOC annotation: ``dict(folder, filename, width, height, objects)``.

    ``objects`` is a list of ``(name, xmin, ymin, xmax, ymax)`` in VOC (1-based inclusive)
    coordinates; a box that extends past the image is clipped to it (``clipped`` counts them; annotation
    tools often write 0 or the width plus one). Malformed XML, missing fields, unknown classes, non-finite
    coordinates and boxes that are inverted or lie wholly outside the image raise ``ValueError`` naming the file.
    """
    path = Path(xml_path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"{path}: malformed XML: {exc}") from None
    if root.tag != "annotation":
        raise ValueError(f"{path}: root element is <{root.tag}>, expected <annotation>")
    size = root.find("size")
    if size is None:
        raise ValueError(f"{path}: missing <size>")
    width, height = _number(size, "width", path, " in <size>"), _number(size, "height", path, " in <size>")
    if width < 1 or height < 1 or width != int(width) or height != int(height):
        raise ValueError(f"{path}: image size must be positive integers, got {width}x{height}")
    width, height = int(width), int(height)
    objects, clipped = [], 0
    for k, obj in enumerate(root.findall("object"), start=1):
        where = f" in <object> {k}"
        name = _text(obj, "name", path, where)
        if name not in CLASS_IDS:
            raise ValueError(f"{path}: unknown class {name!r}{where}; expected one of {list(CLASS_IDS)}")
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"{path}: missing <bndbox>{where}")
        xmin, ymin, xmax, ymax = (_number(box, t, path, where) for t in ("xmin", "ymin", "xmax", "ymax"))
        if xmin > xmax or ymin > ymax:
            raise ValueError(f"{path}: inverted box{where}: xmin={xmin} xmax={xmax} ymin={ymin} ymax={ymax}")
        inside = (max(xmin, 1.0), max(ymin, 1.0), min(xmax, float(width)), min(ymax, float(height)))
        if inside[0] > inside[2] or inside[1] > inside[3]:
            raise ValueError(
                f"{path}: box{where} ({xmin}, {ymin}, {xmax}, {ymax}) lies outside the {width}x{height} image "
                "(VOC coordinates are 1-based inclusive)"
            )
        clipped += inside != (xmin, ymin, xmax, ymax)
        objects.append((name, *inside))
    return {
        "folder": _text(root, "folder", path),
        "filename": _text(root, "filename", path),
        "width": width,
        "height": height,
        "objects": objects,
        "clipped": clipped,
    }


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of the image file ``path``; an unreadable file is a ValueError naming it."""
    try:
        with Image.open(path) as im:
            return im.size
    except OSError as exc:
        raise ValueError(f"{path}: not a readable image ({str(exc).splitlines()[0]})") from None


def read_rgb(path: Path) -> np.ndarray:
    """The image file ``path`` as uint8 RGB (H, W, 3); an unreadable file is a ValueError naming it."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as exc:
        raise ValueError(f"{path}: not a readable image ({str(exc).splitlines()[0]})") from None


def voc_to_xyxy(xmin: float, ymin: float, xmax: float, ymax: float) -> list[float]:
    """VOC 1-based inclusive corners -> 0-based continuous ``[x0, y0, x1, y1]``."""
    return [float(xmin) - 1.0, float(ymin) - 1.0, float(xmax), float(ymax)]


def _number_of(path: Path, suffix: str) -> int:
    """Frame number of ``<n><suffix>``; anything else in a layout folder is an error."""
    if not path.is_file() or path.suffix != suffix or not path.stem.isdigit() or str(int(path.stem)) != path.stem:
        raise ValueError(f"{path}: unexpected entry; expected files named <n>{suffix} (n without leading zeros)")
    return int(path.stem)


def _numbers(folder: Path, suffix: str) -> dict[int, Path]:
    return {_number_of(p, suffix): p for p in sorted(folder.iterdir())} if folder.is_dir() else {}


def _subfolders(folder: Path) -> list[Path]:
    entries = sorted(folder.iterdir()) if folder.is_dir() else []
    for p in entries:
        if not p.is_dir():
            raise ValueError(f"{p}: unexpected file; this split keeps one folder per video")
    return entries


_Entry = tuple[Path, dict[str, Any]] | None


def _frames_by_video(layout: KUMCLayout, split: str) -> dict[str, dict[int, _Entry]]:
    """video -> {frame number: (XML path, parsed XML) or None}, checking every XML has its image."""
    image_dir, ann_dir = layout.image_dir(split), layout.annotation_dir(split)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"{image_dir}: KUMC image folder not found")
    videos: dict[str, dict[int, _Entry]] = {}
    if split in layout.FLAT_SPLITS:
        images, xmls = _numbers(image_dir, ".jpg"), _numbers(ann_dir, ".xml")
        for number, xml in xmls.items():
            if number not in images:
                raise FileNotFoundError(f"{xml}: annotation without its image {image_dir / f'{number}.jpg'}")
        for number, image in images.items():
            if number not in xmls:
                raise ValueError(f"{image}: no annotation; in the flat {split} split the XML <folder> names the video")
            ann = parse_voc(xmls[number])
            videos.setdefault(ann["folder"], {})[number] = (xmls[number], ann)
        return videos
    ann_videos = {p.name: p for p in _subfolders(ann_dir)}
    for folder in _subfolders(image_dir):
        images = _numbers(folder, ".jpg")
        xmls = _numbers(ann_videos.pop(folder.name, ann_dir / folder.name), ".xml")
        for number, xml in xmls.items():
            if number not in images:
                raise FileNotFoundError(f"{xml}: annotation without its image {folder / f'{number}.jpg'}")
        videos[folder.name] = {n: (xmls[n], parse_voc(xmls[n])) if n in xmls else None for n in images}
    if ann_videos:
        extra = next(iter(ann_videos.values()))
        raise FileNotFoundError(f"{extra}: annotation folder without an image folder {image_dir / extra.name}")
    return videos


def index_kumc(root: str | Path) -> pd.DataFrame:
    """Manifest of the raw KUMC release: one row per frame of every split.

    ``frame`` is the 1-based order within the video after sorting file numbers numerically.
    Frames without an XML are unannotated (``annotated`` False, empty ``annotation``); an XML
    without objects is an annotated polyp-free frame. ``boxes`` is a JSON list of ``[x0, y0, x1, y1]``
    (see the module docstring) and ``labels`` a JSON list of class ids. ``width``/``height`` come from
    the JPEG and must agree with the XML ``<size>``.
    """
    layout = KUMCLayout(Path(root))
    rows: list[dict[str, Any]] = []
    clipped: list[tuple[Path, int]] = []
    for split in layout.SPLITS:
        if not layout.split_dir(split).is_dir():
            raise FileNotFoundError(f"{layout.split_dir(split)}: KUMC split folder not found")
        for video, frames in sorted(_frames_by_video(layout, split).items(), key=lambda kv: _video_key(kv[0])):
            for order, number in enumerate(sorted(frames), start=1):
                image = layout.image(split, video, number)
                width, height = image_size(image)
                xml, ann = frames[number] or (None, None)
                boxes, labels = [], []
                if ann is not None:
                    if (ann["width"], ann["height"]) != (width, height):
                        raise ValueError(
                            f"{xml}: <size> {ann['width']}x{ann['height']} differs from the image {image} {width}x{height}"
                        )
                    boxes = [voc_to_xyxy(*obj[1:]) for obj in ann["objects"]]
                    if ann["clipped"]:
                        clipped.append((xml, ann["clipped"]))
                    labels = [CLASS_IDS[obj[0]] for obj in ann["objects"]]
                rows.append(
                    {
                        "split": split,
                        "video": video,
                        "frame": order,
                        "image": image.relative_to(layout.root).as_posix(),
                        "annotation": xml.relative_to(layout.root).as_posix() if xml is not None else "",
                        "annotated": xml is not None,
                        "boxes": json.dumps(boxes),
                        "labels": json.dumps(labels),
                        "width": width,
                        "height": height,
                    }
                )
    if clipped:
        log.warning(
            "KUMC: %d box(es) in %d annotation file(s) extended past their image and were clipped to it (first: %s)",
            sum(n for _, n in clipped),
            len(clipped),
            clipped[0][0],
        )
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _video_key(name: str) -> tuple[int, int | str]:
    """Numeric video names in numeric order, then the rest alphabetically."""
    return (0, int(name)) if name.isdigit() else (1, name)


def annotated_frames(manifest: pd.DataFrame, split: str) -> pd.DataFrame:
    """Annotated rows of ``split`` in manifest order with their COCO ``image_id`` (1-based)."""
    if split not in KUMCLayout.SPLITS:
        raise ValueError(f"split must be one of {KUMCLayout.SPLITS}, got {split!r}")
    rows = manifest[(manifest["split"] == split) & manifest["annotated"].astype(bool)].reset_index(drop=True)
    return rows.assign(image_id=np.arange(1, len(rows) + 1), video=rows["video"].astype(str))


def to_coco(manifest: pd.DataFrame, split: str) -> dict[str, Any]:
    """COCO detection dict for the annotated frames of ``split`` (polyp-free frames are images without boxes)."""
    rows = annotated_frames(manifest, split)
    images, annotations = [], []
    for row in rows.itertuples(index=False):
        images.append(
            {
                "id": int(row.image_id),
                "file_name": row.image,
                "width": int(row.width),
                "height": int(row.height),
                "video": row.video,
                "frame": int(row.frame),
            }
        )
        for (x0, y0, x1, y1), label in zip(json.loads(row.boxes), json.loads(row.labels), strict=True):
            w, h = x1 - x0, y1 - y0
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": int(row.image_id),
                    "category_id": int(label),
                    "bbox": [x0, y0, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    return {
        "info": {"description": f"KUMC {split} (annotated frames)"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": name} for name, i in CLASS_IDS.items()],
    }


class KUMCDataset:
    """Annotated frames of one split, each with reference frames from the same video.

    Items: ``dict(frames=uint8 (T, H, W, 3), key_index=int, boxes=float32 (N, 4), labels=int64 (N,),
    image_id=int, video=str, indices=list[int])``. Frames are in temporal order: the key frame plus
    one frame per offset in ``ref_offsets`` (clamped to the video's first/last frame), so
    ``key_index`` is the number of negative offsets. References may be unannotated frames.
    ``indices`` are 0-based positions in the video; ``image_id`` matches :func:`to_coco`.
    ``transform`` (if given) maps the item dict to the returned one.
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        root: str | Path,
        split: str,
        ref_offsets: Sequence[int] = (),
        transform=None,
    ) -> None:
        offsets = [int(o) for o in ref_offsets]
        if 0 in offsets or len(set(offsets)) != len(offsets):
            raise ValueError(f"ref_offsets must be distinct and non-zero, got {list(ref_offsets)}")
        self.offsets = sorted(offsets)
        self.key_index = sum(o < 0 for o in self.offsets)
        self.items = annotated_frames(manifest, split)
        if self.items.empty:
            raise ValueError(f"manifest has no annotated frames for split {split!r}")
        rows = manifest[manifest["split"] == split]
        self.videos = {
            str(v): g.sort_values("frame")["image"].tolist() for v, g in rows.groupby(rows["video"].astype(str))
        }
        self.root, self.transform = Path(root), transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.load(index, self.offsets)

    def load(self, index: int, ref_offsets: Sequence[int]) -> dict[str, Any]:
        """Item ``index`` with the reference frames at ``ref_offsets`` instead of the dataset's own
        (training draws new offsets per item)."""
        import torch  # here, not at module level: indexing and evaluation import this module without torch

        ref = sorted(int(o) for o in ref_offsets)
        if 0 in ref or len(set(ref)) != len(ref):
            raise ValueError(f"ref_offsets must be distinct and non-zero, got {list(ref_offsets)}")
        key_index = sum(o < 0 for o in ref)
        row = self.items.iloc[index]
        images = self.videos[row["video"]]
        key = int(row["frame"]) - 1
        offsets = ref[:key_index] + [0] + ref[key_index:]
        indices = [min(max(key + o, 0), len(images) - 1) for o in offsets]
        frames = []
        for i in indices:
            frames.append(read_rgb(self.root / images[i]))
        if len({f.shape for f in frames}) != 1:
            raise ValueError(f"video {row['video']!r}: frames {indices} differ in size")
        boxes = np.asarray(json.loads(row["boxes"]), dtype=np.float32).reshape(-1, 4)
        item = {
            "frames": torch.from_numpy(np.stack(frames)),
            "key_index": key_index,
            "boxes": torch.from_numpy(boxes),
            "labels": torch.as_tensor(json.loads(row["labels"]), dtype=torch.int64),
            "image_id": int(row["image_id"]),
            "video": row["video"],
            "indices": indices,
        }
        return self.transform(item) if self.transform is not None else item


def summarize_split(rows: pd.DataFrame) -> dict[str, Any]:
    """Counts of one split of the manifest, for ``manifest.json``."""
    annotated = rows[rows["annotated"]]
    labels = [label for labels in annotated["labels"] for label in json.loads(labels)]
    return {
        "videos": int(rows["video"].nunique()),
        "frames": len(rows),
        "annotated_frames": len(annotated),
        "polyp_free_frames": int((annotated["labels"] == "[]").sum()),
        "boxes": {name: labels.count(i) for name, i in CLASS_IDS.items()},
    }

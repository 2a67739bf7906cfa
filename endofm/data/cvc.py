"""CVC ("CVC-12k", really the 612-frame CVC-ClinicDB): sequences of tif frames with polyp masks.

A sequence is a range of frame numbers ``start .. start + length - 1``; one dataset item is one
whole sequence. Masks follow the official rule: a pixel is polyp iff its value is exactly 255 (or 1 where
``data.cvc12k_polyp_value`` declares masks saved as 0/1); every other value (including the anti-aliased greys
at mask borders) is background.

Layer: data and models (docs/architecture.md). May import: foundation and the other data modules.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tifffile

from endofm.data.layouts import CVCLayout

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
COLUMNS = (
    "split",
    "sequence",
    "frame_index",
    "frame_number",
    "image",
    "mask",
    "height",
    "width",
    "polyp_pixels",
    "overlaps_other_split",
    "polyp_value",
)
#: Mask values that may mark a polyp pixel (``data.cvc12k_polyp_value``); the official masks use 255.
POLYP_VALUES = (255, 1)
#: Number of leading ``videolist.txt`` lines that are train when the file has no split column.
OFFICIAL_TRAIN_LINES = 20

# The official hard-coded (start, length) lists, kept verbatim. FLAW: 7 of the 9 test sequences
# (starts 51, 429, 178, 253, 343, 68, 200) are also train sequences, so the official test set is
# mostly seen in training (docs/original.md section 5, flaw 1). Use them only for the faithful protocol.
OFFICIAL_TRAIN = (
    (104, 23), (529, 18), (448, 19), (26, 25), (343, 21), (178, 22), (429, 19), (200, 6), (127, 25), (253, 25),
    (364, 20), (592, 21), (228, 25), (68, 11), (467, 12), (206, 22), (79, 25), (479, 25), (51, 17), (572, 20),
)  # fmt: skip
OFFICIAL_TEST = ((51, 17), (318, 25), (429, 19), (1, 25), (178, 22), (253, 25), (343, 21), (68, 11), (200, 6))


@dataclass(frozen=True)
class Sequence:
    """Frames ``start .. start + length - 1`` of CVC-ClinicDB, in ``split``."""

    name: str
    start: int
    length: int
    split: str

    @property
    def frames(self) -> range:
        return range(self.start, self.start + self.length)


def official_sequences() -> list[Sequence]:
    """The hard-coded official lists (train first), named ``<first>-<last>`` frame number."""
    return [
        Sequence(f"{start:03d}-{start + length - 1:03d}", start, length, split)
        for split, pairs in (("train", OFFICIAL_TRAIN), ("test", OFFICIAL_TEST))
        for start, length in pairs
    ]


def _parse_sequence_list(path: Path) -> list[Sequence]:
    parsed: list[tuple[int, str, int, int, str | None]] = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{lineno}"
        if len(fields) not in (3, 4):
            raise ValueError(f"{where}: expected '<name> <start> <length> [train|test]', got {line.strip()!r}")
        name, start, length = fields[:3]
        try:
            start_i, length_i = int(start), int(length)
        except ValueError:
            raise ValueError(f"{where}: start and length must be integers, got {start!r} {length!r}") from None
        if start_i < 1 or length_i < 1:
            raise ValueError(f"{where}: start and length must be >= 1, got {start_i} {length_i}")
        split = fields[3] if len(fields) == 4 else None
        if split is not None and split not in SPLITS:
            raise ValueError(f"{where}: split must be one of {SPLITS}, got {split!r}")
        if parsed and (split is None) != (parsed[0][4] is None):
            raise ValueError(f"{where}: either every line has a split column or none does (line {parsed[0][0]})")
        parsed.append((lineno, name, start_i, length_i, split))
    if not parsed:
        raise ValueError(f"{path}: no sequences listed")
    if parsed[0][4] is None and len(parsed) <= OFFICIAL_TRAIN_LINES:
        raise ValueError(
            f"{path}: without a split column the first {OFFICIAL_TRAIN_LINES} lines are train and the rest "
            f"test, but the file lists only {len(parsed)} sequences (no test sequences)"
        )
    sequences, seen = [], {}
    for i, (lineno, name, start, length, split) in enumerate(parsed):
        split = split or ("train" if i < OFFICIAL_TRAIN_LINES else "test")
        if (split, name) in seen:
            raise ValueError(f"{path}:{lineno}: sequence {name!r} already in {split} on line {seen[split, name]}")
        seen[split, name] = lineno
        sequences.append(Sequence(name, start, length, split))
    return sequences


def read_sequences(root: str | Path) -> list[Sequence]:
    """Sequences from ``<root>/videolist.txt`` if present, else the official hard-coded lists."""
    layout = CVCLayout(Path(root))
    if layout.sequence_list.is_file():
        return _parse_sequence_list(layout.sequence_list)
    log.info("%s not found: using the official CVC-ClinicDB sequence lists (frames 1-612)", layout.sequence_list)
    return official_sequences()


def _check_official_frames(layout: CVCLayout, sequences: list[Sequence]) -> None:
    """Without ``videolist.txt`` the official lists need every frame they name; say so up front."""
    needed = sorted({n for seq in sequences for n in seq.frames})
    missing = [n for n in needed if not layout.image(n).is_file()]
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        raise FileNotFoundError(
            f"{layout.sequence_list}: not found, so the official CVC-ClinicDB sequence lists are used, which need "
            f"frames {needed[0]}-{needed[-1]}.tif; {layout.images_dir} lacks {len(missing)} of them ({shown}): add a "
            "videolist.txt ('<name> <start> <length> [train|test]' per line) for other data"
        )


def _read_tif(path: str | Path) -> np.ndarray:
    try:
        return tifffile.imread(path)
    except (tifffile.TiffFileError, ValueError, OSError) as exc:
        raise ValueError(f"{path}: not a readable TIFF image ({exc})") from None


def read_image(path: str | Path) -> np.ndarray:
    """A CVC tif as uint8 RGB (H, W, 3): uint8 passes through, other depths are min-maxed to 0..255."""
    image = _read_tif(path)
    if image.ndim == 3 and image.shape[-1] == 4:
        image = image[..., :3]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"{path}: expected a grey or RGB image, got shape {image.shape}")
    if image.dtype != np.uint8:
        lo, hi = float(image.min()), float(image.max())
        image = ((image.astype(np.float64) - lo) * 255.0 / max(hi - lo, 1e-12)).round().astype(np.uint8)
    return image


def _raw_mask(path: str | Path) -> np.ndarray:
    mask = _read_tif(path)
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D mask, got shape {mask.shape}")
    return mask


def read_mask(path: str | Path, polyp_value: int = 255) -> np.ndarray:
    """A CVC mask tif as uint8 {0, 1} (H, W): exactly ``polyp_value`` -> 1, anything else -> 0 (the official rule,
    with 255). Multi-channel masks use their first channel (the ground truth is grey; RGB copies repeat it)."""
    return (_raw_mask(path) == polyp_value).astype(np.uint8)


def polyp_values(rows: pd.DataFrame) -> list[int]:
    """The polyp value of each manifest row (255 for an index written before the column existed)."""
    return rows["polyp_value"].astype(int).tolist() if "polyp_value" in rows else [255] * len(rows)


def _image_shape(path: Path) -> tuple[int, int]:
    try:
        with tifffile.TiffFile(path) as tif:
            shape = tif.pages[0].shape
    except (tifffile.TiffFileError, ValueError, OSError) as exc:
        raise ValueError(f"{path}: not a readable TIFF image ({exc})") from None
    return int(shape[0]), int(shape[1])


def index_cvc(root: str | Path, polyp_value: int = 255) -> pd.DataFrame:
    """Manifest with one row per (split, sequence, frame) of the sequences from :func:`read_sequences`.

    ``frame_index`` is the 0-based position in the sequence, ``frame_number`` the ``i`` of ``{i}.tif``,
    ``polyp_pixels`` the count of mask pixels equal to ``polyp_value`` (255 in the official masks; 1 for
    masks saved as 0/1, which must then hold only 0 and 1), recorded in ``polyp_value`` for the readers.
    ``overlaps_other_split`` marks frames that a sequence of another split also uses (the official lists
    have 121 such test frames).
    """
    if polyp_value not in POLYP_VALUES:
        raise ValueError(f"data.cvc12k_polyp_value: expected one of {list(POLYP_VALUES)}, got {polyp_value!r}")
    layout = CVCLayout(Path(root))
    sequences = read_sequences(root)
    if not layout.sequence_list.is_file():
        _check_official_frames(layout, sequences)
    splits_of: dict[int, set[str]] = {}
    for seq in sequences:
        for number in seq.frames:
            splits_of.setdefault(number, set()).add(seq.split)
    rows: list[dict[str, Any]] = []
    unscaled: dict[str, tuple[Path, np.ndarray]] = {}  # per split: a mask with values but none at 255
    for seq in sequences:
        for position, number in enumerate(seq.frames):
            image, mask = layout.image(number), layout.mask(number)
            for kind, path in (("image", image), ("mask", mask)):
                if not path.is_file():
                    raise FileNotFoundError(
                        f"{path}: {kind} of frame {number} of {seq.split} sequence {seq.name!r} not found"
                    )
            height, width = _image_shape(image)
            raw = _raw_mask(mask)
            if raw.shape != (height, width):
                raise ValueError(f"{mask}: mask shape {raw.shape} differs from image {image} {(height, width)}")
            if polyp_value == 1 and raw.max(initial=0) > 1:
                shown = ", ".join(str(v) for v in np.unique(raw)[:6])
                raise ValueError(
                    f"{mask}: mask values {{{shown}}} but data.cvc12k_polyp_value is 1 (0/1 masks); for CVC-ClinicDB's "
                    "0/255 masks set it to 255"
                )
            mask_array = (raw == polyp_value).astype(np.uint8)
            if not mask_array.any() and raw.any():
                unscaled.setdefault(seq.split, (mask, np.unique(raw)))
            rows.append(
                {
                    "split": seq.split,
                    "sequence": seq.name,
                    "frame_index": position,
                    "frame_number": number,
                    "image": image.relative_to(layout.root).as_posix(),
                    "mask": mask.relative_to(layout.root).as_posix(),
                    "height": height,
                    "width": width,
                    "polyp_pixels": int(mask_array.sum()),
                    "overlaps_other_split": len(splits_of[number]) > 1,
                    "polyp_value": polyp_value,
                }
            )
    manifest = pd.DataFrame(rows, columns=list(COLUMNS))
    for split, part in manifest.groupby("split", sort=False):
        if (part["polyp_pixels"] > 0).any():
            continue
        if split in unscaled:
            path, values = unscaled[split]
            shown = ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
            raise ValueError(
                f"{path}: mask values {{{shown}}} but none is 255, and no {split} mask has a 255 pixel; CVC-ClinicDB "
                "marks the polyp 255 and the background 0 (for masks saved as 0/1 set data.cvc12k_polyp_value: 1)"
            )
        raise ValueError(
            f"{layout.root}: no {split} frame has a polyp pixel ({polyp_value}) in its mask; every CVC-ClinicDB frame "
            "shows a polyp, so the masks are not in the format data.cvc12k_polyp_value declares "
            f"(first: {layout.root / part['mask'].iloc[0]})"
        )
    return manifest


class CVCSequenceDataset:
    """Whole sequences of one split: ``dict(frames=uint8 (T, H, W, 3), masks=uint8 {0,1} (T, H, W), sequence)``.

    ``transform`` (if given) maps that dict to the returned one.
    """

    def __init__(self, manifest: pd.DataFrame, root: str | Path, split: str, transform=None) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        rows = manifest[manifest["split"] == split]
        if rows.empty:
            raise ValueError(f"manifest has no rows for split {split!r}")
        rows = rows.assign(sequence=rows["sequence"].astype(str))
        order = list(dict.fromkeys(rows["sequence"]))  # manifest order
        self.sequences = [(name, rows[rows["sequence"] == name].sort_values("frame_index")) for name in order]
        self.root, self.transform = Path(root), transform

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch  # here, not at module level: indexing and evaluation import this module without torch

        name, rows = self.sequences[index]
        frames = [read_image(self.root / p) for p in rows["image"]]
        masks = [read_mask(self.root / p, v) for p, v in zip(rows["mask"], polyp_values(rows), strict=True)]
        shapes = {f.shape[:2] for f in frames} | {m.shape for m in masks}
        if len(shapes) != 1:
            raise ValueError(f"sequence {name!r}: frames and masks differ in size: {sorted(shapes)}")
        item = {
            "frames": torch.from_numpy(np.stack(frames)),
            "masks": torch.from_numpy(np.stack(masks)),
            "sequence": name,
        }
        return self.transform(item) if self.transform is not None else item


def summarize_split(rows: pd.DataFrame) -> dict[str, Any]:
    """Counts of one split of the manifest, for ``manifest.json``."""
    return {
        "sequences": int(rows["sequence"].nunique()),
        "frames": len(rows),
        "frames_with_polyp": int((rows["polyp_pixels"] > 0).sum()),
        "frames_in_other_split": int(rows["overlaps_other_split"].sum()),
    }

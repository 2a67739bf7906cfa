"""The on-disk layouts of the official datasets: the one place that knows file and folder names.

The synthetic corpus writes these layouts and the indexers read them, so a real download and the
built-in data go through the same code. See ``docs/original.md`` sections 3.2 and 4 for the originals.

Layer: data and models (docs/architecture.md). May import: foundation and the other data modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".wmv")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

#: Frame folders of the pretraining sources: ``<video>/img_00001.jpg`` (1-based).
FRAME_PATTERN = "img_{:05d}.jpg"
FRAME_GLOB = "img_*.jpg"
#: Clip files written by extraction (the official ``{index:05}.mp4`` with the source video kept).
CLIP_PATTERN = "{video}_{index:05d}.mp4"
CLIPS_MANIFEST = "clips.csv"
SKIPPED_REPORT = "skipped.csv"


def frame_name(index: int) -> str:
    """File name of 0-based frame ``index`` in a pretraining frame folder."""
    return FRAME_PATTERN.format(index + 1)


@dataclass(frozen=True)
class PolypDiagLayout:
    """``<root>/videos/<file>`` and ``<root>/splits/{train,val}.txt`` (``val`` is the official test).

    Split lines are ``<path relative to videos/>,<label>`` with label 1 = abnormal.
    """

    root: Path
    SPLITS = ("train", "val")

    @property
    def videos_dir(self) -> Path:
        return Path(self.root) / "videos"

    def split_file(self, split: str) -> Path:
        return Path(self.root) / "splits" / f"{split}.txt"


@dataclass(frozen=True)
class CVCLayout:
    """CVC-ClinicDB as the official loader reads it.

    ``<root>/CVC-ClinicDB/Original/{i}.tif`` and ``<root>/CVC-ClinicDB/Ground Truth/{i}.tif``,
    i = 1..N. Sequences are ranges of frame numbers: ``<root>/videolist.txt`` with lines
    ``<name> <start> <length> [train|test]`` (the older official format; without the split column
    the official rule applies: the first 20 lines train, the rest test). Without the file the
    hard-coded official lists are used.
    """

    root: Path
    SEQUENCE_LIST = "videolist.txt"

    @property
    def base(self) -> Path:
        return Path(self.root) / "CVC-ClinicDB"

    @property
    def images_dir(self) -> Path:
        return self.base / "Original"

    @property
    def masks_dir(self) -> Path:
        return self.base / "Ground Truth"

    def image(self, i: int) -> Path:
        return self.images_dir / f"{i}.tif"

    def mask(self, i: int) -> Path:
        return self.masks_dir / f"{i}.tif"

    @property
    def sequence_list(self) -> Path:
        return Path(self.root) / self.SEQUENCE_LIST


@dataclass(frozen=True)
class KUMCLayout:
    """The KUMC (PolypsSet) release: ``<root>/{train,val,test}2019/{Image,Annotation}/``.

    In ``train2019`` frames and XMLs are flat (``Image/<n>.jpg``, ``Annotation/<n>.xml``) and the
    XML ``<folder>`` names the video; in ``val2019``/``test2019`` they sit in one folder per video
    (``Image/<video>/<n>.jpg``). A frame without an XML is unannotated; an XML without ``<object>``
    is a polyp-free frame. ``val2019`` is the split the paper reports.
    """

    root: Path
    SPLITS = ("train", "val", "test")
    CLASSES = ("adenomatous", "hyperplastic")
    FLAT_SPLITS = ("train",)

    def split_dir(self, split: str) -> Path:
        return Path(self.root) / f"{split}2019"

    def image_dir(self, split: str) -> Path:
        return self.split_dir(split) / "Image"

    def annotation_dir(self, split: str) -> Path:
        return self.split_dir(split) / "Annotation"

    def image(self, split: str, video: str, frame: int) -> Path:
        """Frame ``frame`` (1-based file number) of ``video``; flat splits ignore ``video``."""
        d = self.image_dir(split)
        return d / f"{frame}.jpg" if split in self.FLAT_SPLITS else d / video / f"{frame}.jpg"

    def annotation(self, split: str, video: str, frame: int) -> Path:
        d = self.annotation_dir(split)
        return d / f"{frame}.xml" if split in self.FLAT_SPLITS else d / video / f"{frame}.xml"

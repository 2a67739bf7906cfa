"""Registry of the data sources: six public pretraining sets, three benchmarks, three built-in synthetic sets,
and the pretrained weights a baseline starts from (kind ``weights``: CLIP ViT-B/16 for ST-Adapter).

Facts (homepages, access, licences, counts) come from ``docs/original.md`` sections 3.1 and 8; their
``[unverified]`` tags are kept in ``notes``. Every source lives under ``<raw root>/<name>/``
(``resources/raw/<name>/`` in the workflow); ``raw_layout`` and ``instructions`` write that folder
as ``<raw_dir>``, which :func:`missing_data_message` replaces with the real path.

Layer: data and models (docs/architecture.md). May import: foundation and the other data modules.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from endofm import paths
from endofm.config import setting
from endofm.data.layouts import (
    FRAME_GLOB,
    VIDEO_EXTENSIONS,
    CVCLayout,
    KUMCLayout,
    PolypDiagLayout,
    frame_name,
)

#: Where the workflow keeps raw sources; only used to render messages and the registry table.
DEFAULT_RAW_ROOT = paths.RAW
#: Token standing for a source's raw folder in ``raw_layout`` and ``instructions``.
RAW_DIR = "<raw_dir>"

Access = Literal["open", "registration", "request", "builtin"]
Layout = Literal["videos", "frames", "polypdiag", "cvc", "kumc", "weights"]
GATED: tuple[str, ...] = ("registration", "request")
CLIP_LAYOUTS: tuple[str, ...] = ("videos", "frames")


@dataclass(frozen=True)
class Download:
    """One file of a source: fetched from ``url`` into ``<downloads>/<source>/<filename>``."""

    url: str = setting(description="http(s) or file URL of the archive")
    filename: str = setting(description="File name to store the download under")
    sha256: str | None = setting(
        None, "Expected sha256 hex digest (null where none is published; the source's notes say so)"
    )
    unpack: bool = setting(True, "Unpack a zip / tar(.gz) archive into the raw folder")


@dataclass(frozen=True)
class Source:
    """A dataset: where it comes from, under which terms, and what its raw folder must hold."""

    name: str
    title: str
    kind: Literal["pretrain", "benchmark", "weights"]
    modality: str
    homepage: str
    licence: str
    access: Access
    layout: Layout
    raw_layout: str
    downloads: tuple[Download, ...] = ()
    instructions: str = ""
    notes: str = ""
    #: Endo-FM's table (docs/original.md 3.1 for pretraining clips, section 4 for benchmark videos).
    paper_clips: int | None = None
    paper_videos: int | None = None
    paper_frames: int | None = None

    @property
    def gated(self) -> bool:
        return self.access in GATED


class UnknownSourceError(KeyError):
    """A source name that is not in the registry; the message lists the known names."""

    def __str__(self) -> str:
        return str(self.args[0])


# ---------------------------------------------------------------------------------------------
# Layout descriptions, built from endofm.data.layouts so the file names live in one place.

_EXTS = ", ".join(VIDEO_EXTENSIONS)
_VIDEOS_LAYOUT = (
    f"{RAW_DIR}/**/<video><ext>: video files at any depth, <ext> one of {_EXTS} (case-insensitive); "
    "hidden files and folders (names starting with '.') and __MACOSX/ are ignored."
)
_FRAMES_LAYOUT = (
    f"{RAW_DIR}/**/<video>/{frame_name(0)}, {frame_name(1)}, ...: one folder per video (any depth) of "
    f"1-based JPEG frames matching {FRAME_GLOB}; hidden folders and __MACOSX/ are ignored."
)


def _rel(path: Path) -> str:
    return f"{RAW_DIR}/{path.as_posix()}"


_PD = PolypDiagLayout(Path())
_POLYPDIAG_LAYOUT = (
    f"{_rel(_PD.videos_dir)}/<file> (whole videos) and "
    + " and ".join(_rel(_PD.split_file(s)) for s in PolypDiagLayout.SPLITS)
    + "; each split line is '<path relative to videos/>,<label>' with label 1 = abnormal, 0 = normal; "
    f"{_PD.split_file('val').name} is the official test set."
)
_CVC = CVCLayout(Path())
_CVC_LAYOUT = (
    f"{_rel(_CVC.image(1))} ... {_rel(_CVC.image(612))} (frames) and "
    f"{_rel(_CVC.mask(1))} ... (masks, same numbers); optional {_rel(_CVC.sequence_list)} "
    "with lines '<name> <start> <length> [train|test]' (without it the official hard-coded sequences are used)."
)
_KUMC = KUMCLayout(Path())
_KUMC_LAYOUT = (
    "the PolypsSet release: "
    f"{_rel(_KUMC.image('train', '', 1))} with {_rel(_KUMC.annotation('train', '', 1))} (flat; the XML <folder> "
    f"names the video), and {_rel(_KUMC.image('val', '<video>', 1))} with "
    f"{_rel(_KUMC.annotation('val', '<video>', 1))} (likewise for test); Pascal-VOC XML, classes "
    + " / ".join(KUMCLayout.CLASSES)
    + f"; {_KUMC.split_dir('val').name} is the split the paper reports."
)

_NO_CHECKSUM = "No checksum is published for its files, so none is checked (sha256 None)."
_NO_URL = "No direct archive URL is confirmed here, so it is not downloaded automatically."


def _manual(what: str, where: str = f"{RAW_DIR}/") -> str:
    return f"{what} Put the files under {where} exactly as the expected layout says."


# ---------------------------------------------------------------------------------------------
# Pretraining sources (docs/original.md table 3.1 counts; section 8 hosts, access, licences, formats).

_PRETRAIN = (
    Source(
        name="colonoscopic",
        title="Colonoscopic (Mesejo et al., TMI 2016)",
        kind="pretrain",
        modality="colonoscope",
        homepage="https://depeca.uah.es/colonoscopy_dataset/",
        licence="academic use [unverified]",
        access="open",
        layout="videos",
        raw_layout=_VIDEOS_LAYOUT,
        instructions=_manual("Download the lesion videos from https://depeca.uah.es/colonoscopy_dataset/."),
        notes=(
            "Provider CNRS (Endo-FM table). Raw: 76 lesion videos, white light + NBI [unverified]. "
            f"Endo-FM shipped it preprocessed only (CUHK SharePoint, links failing). {_NO_URL} {_NO_CHECKSUM}"
        ),
        paper_clips=210,
        paper_frames=36_534,
    ),
    Source(
        name="sun_seg",
        title="SUN & SUN-SEG (SUN Colonoscopy Video Database)",
        kind="pretrain",
        modality="colonoscope",
        homepage="http://amed8k.sundatabase.org/",
        licence="non-commercial research, no redistribution [unverified]",
        access="request",
        layout="frames",
        raw_layout=(
            _FRAMES_LAYOUT + " For SUN-SEG these are the per-case re-indexed folders (as Endo-FM's sun_seg.py "
            "writes SUN-SEG/indexed/<case>/), not the original SUN-SEG file names."
        ),
        instructions=_manual(
            "Send the written request to the SUN database (http://amed8k.sundatabase.org/); SUN-SEG's annotations "
            "and preparation are described at https://github.com/GewelsJI/VPS (docs/DATA_PREPARATION.md). "
            "Re-index each case's Train / TestEasy / TestHard (Seen/Unseen) frames to one folder per case "
            f"named {FRAME_GLOB}, 1-based."
        ),
        notes=(
            "Providers Showa / Nagoya / ANU. SUN-SEG frames are identical to SUN's (Endo-FM issue #23); only "
            "SUN-SEG was processed. Endo-FM's sun_seg.txt lists 1,010 segments from 298 cases, 159,415 frames, "
            f"giving 1,018 clips. No preprocessed copy exists. {_NO_CHECKSUM}"
        ),
        paper_clips=1_018,
        paper_frames=159_400,
    ),
    Source(
        name="ldpolypvideo",
        title="LDPolypVideo",
        kind="pretrain",
        modality="colonoscope",
        homepage="https://github.com/dashishi/LDPolypVideo-Benchmark",
        licence="research use, no explicit licence [unverified]",
        access="open",
        layout="videos",
        raw_layout=_VIDEOS_LAYOUT,
        instructions=_manual(
            "Download the videos through the Baidu / Google Drive links on "
            "https://github.com/dashishi/LDPolypVideo-Benchmark (drive links cannot be fetched by a script)."
        ),
        notes=(
            "Provider USTC. Raw: 160 annotated videos (~40K boxed frames) + 103 unlabelled long videos "
            f"[unverified]. Also a PolypDiag origin (no de-duplication, Endo-FM issue #9). {_NO_URL} {_NO_CHECKSUM}"
        ),
        paper_clips=237,
        paper_frames=40_186,
    ),
    Source(
        name="hyper_kvasir",
        title="Hyper-Kvasir",
        kind="pretrain",
        modality="gastroscope",
        homepage="https://datasets.simula.no/hyper-kvasir/",
        licence="CC BY 4.0 [unverified]",
        access="open",
        layout="videos",
        raw_layout=_VIDEOS_LAYOUT,
        downloads=(
            Download(
                url="https://datasets.simula.no/downloads/hyper-kvasir/hyper-kvasir-videos.zip",
                filename="hyper-kvasir-videos.zip",
            ),
        ),
        instructions=_manual(
            "If the download fails, get the labeled videos (hyper-kvasir-videos.zip, 25.2 GB) from "
            "https://datasets.simula.no/hyper-kvasir/ or the OSF project https://osf.io/mh9sj and unpack it."
        ),
        notes=(
            "Provider Simula. Raw: 110,079 images + 374 videos [verified]; videos are .avi [unverified]; only "
            "the videos are used. The dataset page states its own terms (open for research and education; "
            "commercial use and competitions need written permission): check them against the CC BY 4.0 "
            "[unverified] above. The archive URL follows the datasets.simula.no/downloads/ pattern used by the "
            "Kvasir-Capsule page; the Hyper-Kvasir page source links .../hyper-kvasir/downloads/hyper-kvasir-"
            f"videos.zip instead; neither was fetched from here. Also a PolypDiag origin. {_NO_CHECKSUM}"
        ),
        paper_clips=5_704,
        paper_frames=875_940,
    ),
    Source(
        name="kvasir_capsule",
        title="Kvasir-Capsule",
        kind="pretrain",
        modality="capsule",
        homepage="https://datasets.simula.no/kvasir-capsule/",
        licence="CC BY 4.0 [unverified]",
        access="open",
        layout="videos",
        raw_layout=_VIDEOS_LAYOUT,
        downloads=(
            Download(
                url="https://datasets.simula.no/downloads/kvasir-capsule/kvasir-capsule-labeled-videos.zip",
                filename="kvasir-capsule-labeled-videos.zip",
            ),
            Download(
                url="https://datasets.simula.no/downloads/kvasir-capsule/kvasir-capsule-unlabeled-videos.zip",
                filename="kvasir-capsule-unlabeled-videos.zip",
            ),
        ),
        instructions=_manual(
            "If the download fails, get kvasir-capsule-labeled-videos.zip and kvasir-capsule-unlabeled-videos.zip "
            "from https://datasets.simula.no/kvasir-capsule/ or the OSF project https://osf.io/dv2ag and unpack "
            "both."
        ),
        notes=(
            "Provider Simula. Raw: 117 capsule videos (43 labeled + 74 unlabeled), ~4.7 M frames [unverified]. "
            "The low capsule frame rate changes a 150-frame clip's duration. Which videos gave Endo-FM's 1,000 "
            "clips is not published; both archives are fetched (tens of GB each). The dataset page states "
            "its own terms (open for research and education; commercial use needs written permission). "
            f"{_NO_CHECKSUM}"
        ),
        paper_clips=1_000,
        paper_frames=158_892,
    ),
    Source(
        name="cholect45",
        title="CholecT45 (CholecTriplet)",
        kind="pretrain",
        modality="laparoscope",
        homepage="https://cholectriplet2021.grand-challenge.org/",
        licence="CC BY-NC-SA 4.0 [unverified]",
        access="request",
        layout="frames",
        raw_layout=_FRAMES_LAYOUT + " CholecT45 ships 1 fps frames: rename them to this pattern per video.",
        instructions=_manual(
            "Register at https://cholectriplet2021.grand-challenge.org/ and request CholecT45 through the CAMMA "
            f"request form. Put each video's 1 fps frames in its own folder, renamed {FRAME_GLOB}, 1-based."
        ),
        notes=(
            "Provider BIDMC. Access is registration / request. Raw: 45 videos as 1 fps frames, so a "
            f"150-frame clip spans ~150 s of surgery. {_NO_CHECKSUM}"
        ),
        paper_clips=580,
        paper_frames=90_444,
    ),
)

# ---------------------------------------------------------------------------------------------
# Benchmarks (docs/original.md section 4 counts and layouts, section 8 access and licences).

_BENCHMARKS = (
    Source(
        name="polypdiag",
        title="PolypDiag (Tian et al., MICCAI 2022)",
        kind="benchmark",
        modality="colonoscope",
        homepage="https://github.com/tianyu0207/weakly-polyp",
        licence="inherits Hyper-Kvasir / LDPolypVideo terms",
        access="request",
        layout="polypdiag",
        raw_layout=_POLYPDIAG_LAYOUT,
        instructions=_manual(
            "The homepage holds only a README; the data was distributed only as Endo-FM's SharePoint copy "
            "(links failing, Endo-FM issue #33): ask the Endo-FM authors (https://github.com/med-air/Endo-FM) "
            "for the PolypDiag folder."
        ),
        notes=(
            "253 videos built from Hyper-Kvasir and LDPolypVideo, both also in pretraining (no de-duplication, "
            "Endo-FM issue #9). Split 71 normal + 102 abnormal train, 20 + 60 test [unverified]. "
            f"{_NO_CHECKSUM}"
        ),
        paper_videos=253,
        paper_frames=485_561,
    ),
    Source(
        name="cvc12k",
        title="CVC-12k (read as CVC-ClinicDB)",
        kind="benchmark",
        modality="colonoscope",
        homepage="https://polyp.grand-challenge.org/Databases/",
        licence="research only [unverified]",
        access="request",
        layout="cvc",
        raw_layout=_CVC_LAYOUT,
        instructions=_manual(
            "Request CVC-ClinicDB through https://polyp.grand-challenge.org/Databases/ and copy its "
            f"{_CVC.images_dir.name}/ and {_CVC.masks_dir.name}/ .tif folders as the layout says."
        ),
        notes=(
            "Named CVC-12k / CVC-ClinicVideoDB; the Endo-FM table says 29 videos / 612 frames, and its loader "
            "reads CVC-ClinicDB's 612 .tif frames and masks (root forced to data/pretrain/CVC-ClinicVideoDB/). "
            f"{_NO_CHECKSUM}"
        ),
        paper_videos=29,
        paper_frames=612,
    ),
    Source(
        name="kumc",
        title="KUMC (PolypsSet, Li et al., PLOS ONE 2021)",
        kind="benchmark",
        modality="colonoscope",
        homepage="https://doi.org/10.7910/DVN/FCBUOR",
        licence="Dataverse terms, likely CC0 [unverified]",
        access="open",
        layout="kumc",
        raw_layout=_KUMC_LAYOUT,
        instructions=_manual(
            "Download PolypsSet from the Harvard Dataverse record https://doi.org/10.7910/DVN/FCBUOR and unpack "
            "it so that "
            + ", ".join(f"{_KUMC.split_dir(x).name}/" for x in KUMCLayout.SPLITS)
            + " sit directly in the folder."
        ),
        notes=(
            "Endo-FM table: 53 videos, 19,832 frames, adenoma / hyperplastic; 36 train / 17 test [unverified]. "
            f"Raw release: ~155 videos / ~38K JPEG frames + VOC XML [unverified]. {_NO_URL} {_NO_CHECKSUM}"
        ),
        paper_videos=53,
        paper_frames=19_832,
    ),
)

# ---------------------------------------------------------------------------------------------
# Pretrained weights (docs/original.md §7.2): fetched only by their explicit `download_<name>` target.

#: timm/vit_base_patch16_clip_224.openai on the Hugging Face Hub, pinned to one revision.
CLIP_VITB16_REVISION = "977e3dd0ec55ab8da155f2fbeb6b5f54948b6e3d"
CLIP_VITB16_FILE = "open_clip_model.safetensors"
SVT_K400_FILE = "kinetics400_vitb_ssl.pth"
ENDO_FM_FILE = "endo_fm.pth"
ENDO_FM_DRIVE_ID = "1H7B91Ewm4QkZRsnUk1Bn0IQch5P8C7Xl"

_WEIGHTS = (
    Source(
        name="clip_vitb16",
        title="OpenAI CLIP ViT-B/16 weights (timm/vit_base_patch16_clip_224.openai)",
        kind="weights",
        modality="web images and captions (CLIP pretraining)",
        homepage="https://huggingface.co/timm/vit_base_patch16_clip_224.openai",
        licence="MIT, as the openai/CLIP repository [unverified]; the Hub repository is tagged apache-2.0",
        access="open",
        layout="weights",
        raw_layout=(
            f"{RAW_DIR}/{CLIP_VITB16_FILE}: the OpenAI CLIP state dict (image tower visual.*, text tower), "
            "read by endofm.models.st_adapter.load_image_backbone (which also reads a timm "
            "vit_base_patch16_clip_* state dict saved with torch.save)."
        ),
        downloads=(
            Download(
                url=(
                    "https://huggingface.co/timm/vit_base_patch16_clip_224.openai/resolve/"
                    f"{CLIP_VITB16_REVISION}/{CLIP_VITB16_FILE}"
                ),
                filename=CLIP_VITB16_FILE,
                sha256="4b8699299b1e8997753c64b052ba32031449d5d853f55a039148560ee02b820f",
                unpack=False,
            ),
        ),
        instructions=_manual(
            f"If the download fails, get {CLIP_VITB16_FILE} (revision {CLIP_VITB16_REVISION[:8]}, ~600 MB) from "
            "https://huggingface.co/timm/vit_base_patch16_clip_224.openai/tree/main."
        ),
        notes=(
            "The image tower of OpenAI's CLIP ViT-B/16, ST-Adapter's frozen backbone (QuickGELU: load it into "
            "the vit_base_patch16_clip preset). Only the explicit download_clip_vitb16 target fetches it. The "
            "sha256 is the one two independent public projects record for this file at this revision; the "
            "Hub's own LFS page was not read from here, so a mismatch fails the download rather than being "
            "accepted."
        ),
    ),
    Source(
        name="svt_k400",
        title="SVT's self-supervised Kinetics-400 TimeSformer ViT-B/16 (kinetics400_vitb_ssl.pth)",
        kind="weights",
        modality="Kinetics-400 videos (SVT self-supervised pretraining)",
        homepage="https://github.com/kahnchana/svt",
        licence="as the kahnchana/svt repository [unverified]",
        access="open",
        layout="weights",
        raw_layout=(
            f"{RAW_DIR}/{SVT_K400_FILE}: a flat {{backbone.*, head.*}} state dict (DINO head of 65,536 outputs), "
            "Endo-FM's starting point (pretrain.settings.init)."
        ),
        downloads=(
            Download(
                url=f"https://github.com/kahnchana/svt/releases/download/v1.0/{SVT_K400_FILE}",
                filename=SVT_K400_FILE,
                unpack=False,
            ),
        ),
        notes="The original Endo-FM pretraining continues from these weights. No checksum is published.",
    ),
    Source(
        name="endo_fm",
        title="Endo-FM's released pretrained weights (endo_fm.pth)",
        kind="weights",
        modality="the paper's 33k endoscopy clips (Endo-FM pretraining)",
        homepage="https://github.com/med-air/Endo-FM",
        licence="as the med-air/Endo-FM repository [unverified]",
        access="open",
        layout="weights",
        raw_layout=f"{RAW_DIR}/{ENDO_FM_FILE}: the official pretraining checkpoint (its teacher is the backbone).",
        instructions=(
            f"Download {ENDO_FM_FILE} from the Google Drive file the med-air/Endo-FM README links "
            f"(https://drive.google.com/file/d/{ENDO_FM_DRIVE_ID}) and save it as {RAW_DIR}/{ENDO_FM_FILE}."
        ),
        notes="Hosted on Google Drive (no direct download URL), so it is placed by hand.",
    ),
)

# ---------------------------------------------------------------------------------------------
# Built-in synthetic sources: generated by endofm's synthetic corpus, registered here only.


def _synthetic(name: str, modality: str, layout: Layout, what: str) -> Source:
    return Source(
        name=name,
        title=f"Synthetic {name.removeprefix('synthetic_')} ({what})",
        kind="pretrain",
        modality=modality,
        homepage="",
        licence="Apache-2.0 (generated by endofm)",
        access="builtin",
        layout=layout,
        raw_layout=(_VIDEOS_LAYOUT if layout == "videos" else _FRAMES_LAYOUT) + f" Written as {what}.",
        instructions="Generated by endofm's synthetic corpus (the workflow's synthesize step); not downloaded.",
        notes="Procedurally generated stand-in for a real source; used by the default CPU configuration and tests.",
    )


_SYNTHETIC = (
    _synthetic("synthetic_colonoscopy", "colonoscope", "videos", ".mp4 videos"),
    _synthetic("synthetic_gastroscopy", "gastroscope", "videos", ".avi videos"),
    _synthetic("synthetic_laparoscopy", "laparoscope", "frames", f"{FRAME_GLOB} frame folders"),
)

SOURCES: dict[str, Source] = {s.name: s for s in (*_PRETRAIN, *_BENCHMARKS, *_SYNTHETIC, *_WEIGHTS)}

_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")


def _check_registry(sources: tuple[Source, ...]) -> None:
    """Fail at import on an inconsistent registry entry, naming it."""
    seen: set[str] = set()
    for s in sources:
        if not _NAME_RE.match(s.name):
            raise ValueError(f"source {s.name!r}: name must be snake_case")
        if s.name in seen:
            raise ValueError(f"source {s.name!r}: registered twice")
        seen.add(s.name)
        if (s.layout in CLIP_LAYOUTS) != (s.kind == "pretrain") or (s.layout == "weights") != (s.kind == "weights"):
            raise ValueError(f"source {s.name!r}: layout {s.layout!r} does not fit kind {s.kind!r}")
        if (s.gated or s.access == "builtin") and s.downloads:
            raise ValueError(f"source {s.name!r}: {s.access} sources cannot have downloads")
        if not s.downloads and not s.instructions:
            raise ValueError(f"source {s.name!r}: without downloads it needs instructions")
        if len({d.filename for d in s.downloads}) != len(s.downloads):
            raise ValueError(f"source {s.name!r}: download file names must be unique")


_check_registry((*_PRETRAIN, *_BENCHMARKS, *_SYNTHETIC, *_WEIGHTS))


def get_source(name: str) -> Source:
    """The registered source called ``name``."""
    try:
        return SOURCES[name]
    except KeyError:
        raise UnknownSourceError(f"unknown data source {name!r}; known: {', '.join(SOURCES)}") from None


def _resolve(source: Source | str) -> Source:
    return get_source(source) if isinstance(source, str) else source


def pretrain_sources(include_synthetic: bool = False) -> list[Source]:
    """The pretraining sources in registry order; the built-in synthetic ones only if asked."""
    return [s for s in SOURCES.values() if s.kind == "pretrain" and (include_synthetic or s.access != "builtin")]


def benchmark_sources() -> list[Source]:
    """The three downstream benchmarks in registry order."""
    return [s for s in SOURCES.values() if s.kind == "benchmark"]


def _ignored(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def find_videos(folder: Path, layout: Literal["videos", "frames", "any"] = "any") -> list[Path]:
    """Video files (suffix in ``VIDEO_EXTENSIONS``) and/or frame folders (holding ``FRAME_GLOB`` files)
    at any depth under ``folder``, sorted. Hidden entries and ``__MACOSX`` (archive and atomic-write
    debris) are not data and are not listed."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not _ignored(d)]
        files = [f for f in files if not _ignored(f)]
        if layout in ("videos", "any"):
            found.extend(Path(root) / f for f in files if Path(f).suffix.lower() in VIDEO_EXTENSIONS)
        if layout in ("frames", "any") and any(fnmatch.fnmatchcase(f, FRAME_GLOB) for f in files):
            found.append(Path(root))
    return sorted(found)


def list_source_videos(source: Source | str, raw_dir: Path) -> list[Path]:
    """The videos of a pretraining source's raw folder, sorted: video files, or frame folders.

    See :func:`find_videos` for what counts. Benchmarks are indexed, not clipped, so they raise
    ``ValueError``; a missing or empty folder raises ``FileNotFoundError``.
    """
    source = _resolve(source)
    raw_dir = Path(raw_dir)
    if source.layout not in CLIP_LAYOUTS:
        raise ValueError(
            f"source {source.name!r} has the {source.layout!r} benchmark layout: it is indexed, not cut into clips"
        )
    if not raw_dir.is_dir():
        raise FileNotFoundError(missing_data_message(source, raw_dir))
    found = find_videos(raw_dir, source.layout)
    if not found:
        raise FileNotFoundError(
            f"{raw_dir}: no videos of source {source.name!r} ({source.layout} layout) found; expected "
            + _fill(source.raw_layout, raw_dir)
        )
    return sorted(found)


def _fill(text: str, raw_dir: Path | str) -> str:
    return text.replace(RAW_DIR, str(raw_dir))


def missing_data_message(
    source: Source | str, raw_dir: Path, command: str | None = None, snakemake_args: str = ""
) -> str:
    """What to tell a user whose ``raw_dir`` lacks a source: where to get it and exactly where to put it.

    ``command`` is the command to rerun afterwards; by default the workflow's ``data`` target (after the
    source's ``download_<name>`` target for an open source), with ``snakemake_args`` (e.g. the config file).
    """
    source = _resolve(source)
    raw_dir = Path(raw_dir)
    where = str(raw_dir) if raw_dir.is_absolute() else f"{raw_dir} (that is, {raw_dir.absolute()})"
    args = f" {snakemake_args}" if snakemake_args else ""
    rerun = command or f"snakemake data --cores all{args}"
    if command is None and source.downloads:
        rerun = f"snakemake download_{source.name} --cores all{args}, then your target again"
    if source.access == "builtin":
        how = f"It is generated, not downloaded: {source.instructions}"
    else:
        how = f"Access: {source.access}. {_fill(source.instructions, raw_dir)}"
    lines = [
        f"Data source {source.name!r} ({source.title}) is missing: {where} does not exist.",
        how,
    ]
    if source.homepage:
        lines.append(f"Homepage: {source.homepage}")
    lines += [
        f"Licence: {source.licence}",
        f"Expected folder: {where}",
        f"Expected layout: {_fill(source.raw_layout, raw_dir)}",
        f"Then rerun: {rerun}",
    ]
    return "\n".join(lines)


def missing_weights_message(path: Path | str, snakemake_args: str = "") -> str:
    """What to tell a user whose config names a weights file that is not there: for a file of the registry
    (SVT's, Endo-FM's, CLIP's) where to get it, with the workflow's download target where there is one."""
    path = Path(path)
    known = {d.filename: s for s in SOURCES.values() if s.kind == "weights" for d in s.downloads}
    known[ENDO_FM_FILE] = SOURCES["endo_fm"]
    source = known.get(path.name)
    args = f" {snakemake_args}" if snakemake_args else ""
    lines = [f"Weights file {path} (that is, {path.absolute()}) does not exist."]
    if source is None:
        lines.append("The config names it (a pretraining init, a method's checkpoint or finetune.checkpoints): "
                     "put the file there or change that setting.")  # fmt: skip
    else:
        lines.append(f"It is {source.title}; homepage: {source.homepage}")
        if source.downloads and path.parent.name == source.name:
            lines.append(f"Fetch it with: snakemake download_{source.name} --cores 1{args}")
        elif source.downloads:
            lines.append(f"Download {source.downloads[0].url} to {path}.")
        else:
            lines.append(source.instructions.replace(f"{RAW_DIR}/{path.name}", str(path)))
    lines.append("Then rerun your target.")
    return "\n".join(lines)


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ") if text not in (None, "") else "—"


def registry_markdown(raw_root: str = DEFAULT_RAW_ROOT) -> str:
    """The registry as a Markdown table (for the README and ``endofm sources``)."""
    header = (
        "| name | title | kind | modality | access | licence | Endo-FM clips / videos | Endo-FM frames "
        "| raw folder | fetch |"
    )
    rows = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for s in SOURCES.values():
        count = f"{s.paper_clips:,} clips" if s.paper_clips else f"{s.paper_videos:,} videos" if s.paper_videos else ""
        frames = f"{s.paper_frames:,}" if s.paper_frames else ""
        if s.access == "builtin":
            fetch = "generated"
        elif s.downloads:
            fetch = "download: " + ", ".join(f"[{d.filename}]({d.url})" for d in s.downloads)
        else:
            fetch = f"manual ({s.access}): {s.homepage}"
        title = f"[{s.title}]({s.homepage})" if s.homepage else s.title
        cells = [
            f"`{s.name}`",
            title,
            s.kind,
            s.modality,
            s.access,
            s.licence,
            count,
            frames,
            f"`{raw_root}/{s.name}/`",
            fetch,
        ]
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(rows) + "\n"

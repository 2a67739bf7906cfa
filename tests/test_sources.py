"""The source registry: invariants, the Endo-FM counts, listing raw folders, the messages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from endofm.data import sources as S
from endofm.data.layouts import frame_name

#: docs/original.md table 3.1 (clips, frames) for the six public pretraining sources.
TABLE_3_1 = {
    "colonoscopic": (210, 36_534),
    "sun_seg": (1_018, 159_400),
    "ldpolypvideo": (237, 40_186),
    "hyper_kvasir": (5_704, 875_940),
    "kvasir_capsule": (1_000, 158_892),
    "cholect45": (580, 90_444),
}
#: docs/original.md section 4 (videos, frames) for the benchmarks.
BENCHMARKS = {"polypdiag": (253, 485_561), "cvc12k": (29, 612), "kumc": (53, 19_832)}
SYNTHETIC = {"synthetic_colonoscopy": "videos", "synthetic_gastroscopy": "videos", "synthetic_laparoscopy": "frames"}
WEIGHTS = {"clip_vitb16", "svt_k400", "endo_fm"}


def test_registry_names_are_snake_case_unique_and_keyed() -> None:
    names = [s.name for s in S.SOURCES.values()]
    assert len(names) == len(set(names)) == 15
    assert all(re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", n) for n in names)
    assert all(key == s.name for key, s in S.SOURCES.items())
    assert set(names) == set(TABLE_3_1) | set(BENCHMARKS) | set(SYNTHETIC) | WEIGHTS


def test_pretraining_counts_match_endofm_table() -> None:
    got = {s.name: (s.paper_clips, s.paper_frames) for s in S.pretrain_sources()}
    assert got == TABLE_3_1
    # docs/original.md 3.1 [derived]: the public part is 8,749 clips / 1,361,396 frames.
    assert sum(c for c, _ in got.values()) == 8_749
    assert sum(f for _, f in got.values()) == 1_361_396
    assert all(s.kind == "pretrain" and s.layout in ("videos", "frames") for s in S.pretrain_sources())


def test_benchmark_counts_and_layouts() -> None:
    bench = S.benchmark_sources()
    assert [s.name for s in bench] == list(BENCHMARKS)
    assert {s.name: (s.paper_videos, s.paper_frames) for s in bench} == BENCHMARKS
    assert {s.name: s.layout for s in bench} == {"polypdiag": "polypdiag", "cvc12k": "cvc", "kumc": "kumc"}


def test_synthetic_sources_only_on_request() -> None:
    synth = [s for s in S.pretrain_sources(include_synthetic=True) if s.access == "builtin"]
    assert {s.name: s.layout for s in synth} == SYNTHETIC
    assert not any(s.access == "builtin" for s in S.pretrain_sources())
    assert ".mp4" in S.get_source("synthetic_colonoscopy").raw_layout
    assert ".avi" in S.get_source("synthetic_gastroscopy").raw_layout
    assert all(not s.downloads for s in synth)


@pytest.mark.parametrize("source", list(S.SOURCES.values()), ids=list(S.SOURCES))
def test_every_source_says_how_to_get_it(source: S.Source) -> None:
    endoscopy = ("colonoscope", "gastroscope", "capsule", "laparoscope")
    assert source.title and (source.modality in endoscopy) == (source.kind != "weights")
    assert source.licence and source.raw_layout.startswith((S.RAW_DIR, "the PolypsSet release: <raw_dir>"))
    if source.access != "builtin":
        assert source.homepage.startswith(("http://", "https://"))
    if source.access in ("registration", "request"):
        assert source.instructions and not source.downloads
    elif source.access == "open":
        assert source.downloads or source.instructions
    for d in source.downloads:
        assert d.url.startswith("https://") and d.filename and Path(d.filename).name == d.filename
        assert d.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", d.sha256)
        if d.sha256 is None:
            assert "No checksum is published" in source.notes


def test_clip_weights_are_a_pinned_single_file_download() -> None:
    """ST-Adapter's CLIP ViT-B/16 (docs/original.md §7.2): one checksummed file at a fixed Hub revision, kept as is,
    neither a pretraining source nor a benchmark (so no default target fetches it)."""
    src = S.get_source("clip_vitb16")
    assert src.kind == "weights" and src.layout == "weights" and src.access == "open"
    (d,) = src.downloads
    assert d.url == (
        "https://huggingface.co/timm/vit_base_patch16_clip_224.openai/resolve/"
        "977e3dd0ec55ab8da155f2fbeb6b5f54948b6e3d/open_clip_model.safetensors"
    )
    assert d.filename == "open_clip_model.safetensors" and d.unpack is False
    assert d.sha256 == "4b8699299b1e8997753c64b052ba32031449d5d853f55a039148560ee02b820f"
    assert src not in S.pretrain_sources(include_synthetic=True) and src not in S.benchmark_sources()


def test_unverified_tags_are_kept() -> None:
    assert "[unverified]" in S.get_source("hyper_kvasir").licence
    assert "[unverified]" in S.get_source("cholect45").licence
    assert "1,010 segments from 298 cases" in S.get_source("sun_seg").notes


def test_get_source_unknown_lists_known_names() -> None:
    with pytest.raises(KeyError, match=r"unknown data source 'kvasir'.*hyper_kvasir.*kumc"):
        S.get_source("kvasir")
    assert S.get_source("kumc").kind == "benchmark"


def test_list_source_videos_videos_layout(tmp_path: Path) -> None:
    for rel in ["b.mp4", "sub/a.AVI", "sub/deep/c.mkv", "notes.txt", ".hidden.mp4", "__MACOSX/sub/._a.avi", "img.jpg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    got = S.list_source_videos("hyper_kvasir", tmp_path)
    assert got == [tmp_path / "b.mp4", tmp_path / "sub/a.AVI", tmp_path / "sub/deep/c.mkv"]


def test_list_source_videos_frames_layout(tmp_path: Path) -> None:
    for rel in [f"v1/{frame_name(0)}", f"v1/{frame_name(1)}", f"case/v2/{frame_name(0)}", "other/0001.jpg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    got = S.list_source_videos(S.get_source("cholect45"), tmp_path)
    assert got == [tmp_path / "case/v2", tmp_path / "v1"]


def test_list_source_videos_empty_folder_names_source_and_layout(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(FileNotFoundError, match=rf"{re.escape(str(tmp_path))}.*'colonoscopic'.*videos layout"):
        S.list_source_videos("colonoscopic", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"img_00001\.jpg"):
        S.list_source_videos("synthetic_laparoscopy", tmp_path)


def test_list_source_videos_missing_folder_and_benchmarks(tmp_path: Path) -> None:
    missing = tmp_path / "raw" / "sun_seg"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        S.list_source_videos("sun_seg", missing)
    with pytest.raises(ValueError, match=r"'kumc'.*indexed, not cut into clips"):
        S.list_source_videos("kumc", tmp_path)


def test_missing_data_message_is_actionable(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "cholect45"
    msg = S.missing_data_message("cholect45", raw)
    assert "https://cholectriplet2021.grand-challenge.org/" in msg
    assert f"Expected folder: {raw}" in msg
    assert f"{raw}/**/<video>/{frame_name(0)}" in msg  # the layout with the real folder filled in
    assert S.RAW_DIR not in msg
    assert "Then rerun: snakemake data --cores all\n" in msg + "\n"
    cvc = S.missing_data_message("cvc12k", raw, snakemake_args="--configfile=config/paper.yaml")
    assert cvc.endswith("Then rerun: snakemake data --cores all --configfile=config/paper.yaml")
    open_source = S.missing_data_message("hyper_kvasir", raw, snakemake_args="--configfile=c.yaml")
    assert (
        "Then rerun: snakemake download_hyper_kvasir --cores all --configfile=c.yaml, then your target" in open_source
    )
    assert "Then rerun: endofm x" in S.missing_data_message("cholect45", raw, command="endofm x")
    rel = S.missing_data_message("cvc12k", Path("resources/raw/cvc12k"))
    assert "resources/raw/cvc12k/CVC-ClinicDB/Original/1.tif" in rel
    assert str(Path("resources/raw/cvc12k").absolute()) in rel


def test_registry_markdown_has_one_row_per_source() -> None:
    md = S.registry_markdown()
    lines = md.strip().splitlines()
    assert len(lines) == 2 + len(S.SOURCES)
    assert all(line.startswith("| ") or line.startswith("|---") for line in lines)
    assert len({line.count(" | ") for line in lines[2:]}) == 1  # no stray '|' splitting a cell
    for s in S.SOURCES.values():
        assert f"`{s.name}`" in md and f"`resources/raw/{s.name}/`" in md
    assert "5,704 clips" in md and "hyper-kvasir-videos.zip" in md

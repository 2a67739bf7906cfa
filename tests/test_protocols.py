"""Evaluation protocols: paper (official splits and flaws) versus clean (validation carved by video)."""

from __future__ import annotations

import pandas as pd
import pytest

from endofm.tasks.benchmarks import get_benchmark
from endofm.tasks.protocols import carve_validation, label_subset


def polypdiag_manifest() -> pd.DataFrame:
    rows = [("train", f"t{i}", i % 2) for i in range(10)] + [("val", f"v{i}", i % 2) for i in range(4)]
    return pd.DataFrame(rows, columns=["split", "sample_id", "label"])


def cvc_manifest() -> pd.DataFrame:
    rows = []
    for split, seq, overlaps in [("train", "a", True), ("train", "b", False), ("train", "c", False),
                                 ("train", "d", False), ("train", "e", False), ("test", "a2", True), ("test", "f", False)]:  # fmt: skip
        rows += [(split, seq, f, overlaps) for f in range(3)]
    return pd.DataFrame(rows, columns=["split", "sequence", "frame_index", "overlaps_other_split"])


def test_paper_selects_on_the_test_split():
    splits = get_benchmark("polypdiag").protocol_splits(polypdiag_manifest(), "paper")
    assert splits.test.split == "val" and splits.select.rows.equals(splits.test.rows)
    assert splits.summary()["select_is_test"] and len(splits.units("train")) == 10


def test_clean_carves_validation_by_video_stratified_and_disjoint():
    splits = get_benchmark("polypdiag").protocol_splits(polypdiag_manifest(), "clean", seed=3, val_fraction=0.2)
    train, val = set(splits.units("train")), set(splits.units("select"))
    assert not train & val and train | val == {f"t{i}" for i in range(10)}
    assert splits.select.rows["label"].value_counts().to_dict() == {0: 1, 1: 1}  # 20 % of 5 per label
    assert splits.test.split == "val" and not splits.summary()["select_is_test"]
    again = get_benchmark("polypdiag").protocol_splits(polypdiag_manifest(), "clean", seed=3, val_fraction=0.2)
    assert set(again.units("select")) == val
    other = {
        tuple(get_benchmark("polypdiag").protocol_splits(polypdiag_manifest(), "clean", seed=s).units("select"))
        for s in range(8)
    }
    assert len(other) > 1  # the seed moves the carve-out


def test_clean_cvc_drops_training_sequences_that_leak_into_test():
    paper = get_benchmark("cvc12k").protocol_splits(cvc_manifest(), "paper")
    assert "a" in paper.units("train") and any("share frames" in n for n in paper.notes)
    clean = get_benchmark("cvc12k").protocol_splits(cvc_manifest(), "clean", val_fraction=0.25)
    assert "a" not in clean.units("train") + clean.units("select")
    assert len(clean.units("select")) == 1 and len(clean.units("train")) == 3
    # whole sequences, never frames, move
    assert clean.select.rows.groupby("sequence").size().tolist() == [3]


def test_kumc_clean_selects_on_val2019_and_tests_on_test2019():
    manifest = pd.DataFrame(
        [(s, v) for s, v in [("train", "1"), ("val", "2"), ("test", "3")]], columns=["split", "video"]
    )
    paper, clean = (get_benchmark("kumc").protocol_splits(manifest, p) for p in ("paper", "clean"))
    assert (paper.select.split, paper.test.split) == ("val", "val")
    assert (clean.select.split, clean.test.split) == ("val", "test")


def test_carve_validation_needs_two_units_per_stratum():
    rows = pd.DataFrame({"sample_id": ["x", "y"], "label": [0, 1]})
    with pytest.raises(ValueError, match="need at least 2"):
        carve_validation(rows, "sample_id", 0.5, 0, stratify="label")
    with pytest.raises(ValueError, match="protocol"):
        get_benchmark("polypdiag").protocol_splits(polypdiag_manifest(), "leaky")


def video_rows(n_pos: int, n_neg: int, frames: int = 3) -> pd.DataFrame:
    """Training rows of ``n_pos + n_neg`` videos with ``frames`` rows each and a per-video label."""
    rows = [(f"v{i:02d}", int(i < n_pos), f) for i in range(n_pos + n_neg) for f in range(frames)]
    return pd.DataFrame(rows, columns=["video", "label", "frame"])


def test_label_subsets_are_nested_stratified_whole_videos_and_seeded():
    rows = video_rows(n_pos=30, n_neg=10)
    fractions = [0.1, 0.25, 0.5, 1.0]
    subsets = [label_subset(rows, "video", f, seed=4, stratify="label") for f in fractions]
    videos = [set(s["video"]) for s in subsets]
    assert all(small <= big for small, big in zip(videos, videos[1:], strict=False))  # nested
    # stratified: round(f · n) videos of each label (at least one), by whole video
    per_label = [s.drop_duplicates("video")["label"].value_counts().to_dict() for s in subsets]
    assert per_label == [{1: 3, 0: 1}, {1: 8, 0: 2}, {1: 15, 0: 5}, {1: 30, 0: 10}]
    assert all((s.groupby("video").size() == 3).all() for s in subsets)
    assert subsets[-1] is rows
    assert set(label_subset(rows, "video", 0.25, seed=4, stratify="label")["video"]) == videos[1]
    draws = {frozenset(label_subset(rows, "video", 0.25, seed=s, stratify="label")["video"]) for s in range(6)}
    assert len(draws) > 1  # the seed moves the subset
    with pytest.raises(ValueError, match="label_fraction"):
        label_subset(rows, "video", 0.0, seed=0)


def test_label_fraction_shrinks_training_only():
    manifest = pd.DataFrame(
        [("train", f"t{i:02d}", i % 2) for i in range(40)] + [("val", f"v{i}", i % 2) for i in range(6)],
        columns=["split", "sample_id", "label"],
    )
    for protocol in ("paper", "clean"):
        full = get_benchmark("polypdiag").protocol_splits(manifest, protocol, seed=1)
        part = get_benchmark("polypdiag").protocol_splits(manifest, protocol, seed=1, label_fraction=0.25)
        assert part.units("select") == full.units("select") and part.units("test") == full.units("test")
        assert set(part.units("train")) < set(full.units("train"))
        assert len(part.units("train")) == round(0.25 * len(full.units("train")) / 2) * 2
        assert any("label fraction 0.25" in n for n in part.notes)

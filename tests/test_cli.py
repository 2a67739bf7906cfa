"""The `endofm` command line: help texts, and each data command on the tiny config."""

import json
from pathlib import Path

import pandas as pd
import pytest

from endofm.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests/configs/tiny.yaml"
COMMANDS = ["synth", "extract-clips", "index", "download", "sources", "pretrain", "features", "convert-checkpoint"]


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "--config" in capsys.readouterr().out


def test_sources_table(capsys):
    assert main(["sources"]) == 0
    out = capsys.readouterr().out
    for name in ["hyper_kvasir", "sun_seg", "cholect45", "polypdiag", "cvc12k", "kumc", "synthetic_colonoscopy"]:
        assert f"| {name} |" in out or f"| `{name}` |" in out


def test_synth_extract_and_index_on_tiny_config(tmp_path, capsys):
    raw = tmp_path / "raw"
    assert main(["synth", "synthetic_gastroscopy", "kumc", "--config", str(TINY), "--out", str(raw)]) == 0
    assert (
        main(
            [
                "extract-clips",
                "synthetic_gastroscopy",
                "--config",
                str(TINY),
                "--raw",
                str(raw / "synthetic_gastroscopy"),
                "--out",
                str(tmp_path / "clips"),
                "--clip-length",
                "8",
            ]
        )
        == 0
    )
    clips = pd.read_csv(tmp_path / "clips/clips.csv")
    assert (clips["frames"] >= 8).all() and (clips["frames"] < 16).all()
    assert min(clips[["width", "height"]].min()) == 32  # tiny config: short side 32
    assert (
        main(["index", "kumc", "--config", str(TINY), "--raw", str(raw / "kumc"), "--out", str(tmp_path / "idx")]) == 0
    )
    summary = json.loads((tmp_path / "idx/manifest.json").read_text())
    assert summary["benchmark"] == "kumc" and set(summary["splits"]) == {"train", "val", "test"}


def test_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["index", "polypdiag", "--config", str(TINY), "--raw", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("endofm index: error:") and str(tmp_path / "nope") in err
    assert (
        main(
            [
                "extract-clips",
                "synthetic_gastroscopy",
                "--config",
                str(TINY),
                "--clip-length",
                "0",
                "--raw",
                str(tmp_path),
            ]
        )
        == 1
    )
    assert "clip_length" in capsys.readouterr().err


def test_parser_rejects_unknown_benchmark():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["index", "kvasir"])


def test_convert_checkpoint_round_trip(tmp_path):
    import torch

    from endofm.models.checkpoint import load_checkpoint, save_checkpoint

    teacher = {
        "backbone.cls_token": torch.randn(1, 1, 4),
        "head.last_layer.parametrizations.weight.original0": torch.ones(3, 1),
    }
    ours = save_checkpoint(tmp_path / "ours.pt", epoch=3, teacher=teacher, center=torch.zeros(1, 3))
    assert main(["convert-checkpoint", str(ours), str(tmp_path / "official.pth"), "--to", "official"]) == 0
    official = torch.load(tmp_path / "official.pth", weights_only=True)
    assert "head.last_layer.weight_g" in official["teacher"] and official["dino_loss"]["center"].shape == (1, 3)
    assert main(["convert-checkpoint", str(tmp_path / "official.pth"), str(tmp_path / "back.pt"), "--to", "ours"]) == 0
    back = load_checkpoint(tmp_path / "back.pt")
    assert back["epoch"] == 3 and torch.equal(back["teacher"]["backbone.cls_token"], teacher["backbone.cls_token"])

"""Bad input as a new user makes it: every command fails with one line naming the file or key, exit
status 1, no traceback and nothing partial left; help texts and logs that explain themselves."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml

from endofm.cli import build_parser, main
from endofm.config import ConfigError, check_schema, load_yaml, to_dict
from endofm.data.cvc import index_cvc
from endofm.data.polypdiag import index_polypdiag
from endofm.data.video import write_video
from endofm.errors import UserError
from endofm.features import load_pretrained_backbone
from endofm.logs import LineProgress, progress
from endofm.models.checkpoint import load_checkpoint, saved_backbone
from endofm.models.vit import BackboneConfig
from endofm.settings import load_pretrain_settings

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests/configs/tiny.yaml"
TINY_DATA = yaml.safe_load(TINY.read_text())


@pytest.fixture(autouse=True)
def fresh_logging():
    """main() points logging at the stderr of its test; drop that handler afterwards."""
    yield
    logging.getLogger().handlers.clear()


def fails(args: list[str], capsys) -> str:
    """Run the CLI expecting a user error: exit status 1, no traceback, and the error as stderr's only
    ``error:`` line (after any INFO log lines); returns that line."""
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    command = args[0] if not args[0].startswith("-") else args[1]
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    assert errors[0].startswith(f"endofm {command}: error: ")
    return errors[0]


@pytest.fixture
def clip_csv(tmp_path: Path) -> Path:
    path = tmp_path / "clips.csv"
    path.write_text("path,frames\nx.mp4,3\n")  # wrong columns
    return path


# 1. pretrain takes the workflow config


def test_pretrain_settings_from_the_workflow_config_and_its_variants(tmp_path):
    shipped = yaml.safe_load((ROOT / "config/config.yaml").read_text())["pretrain"]
    method, cfg = load_pretrain_settings(ROOT / "config/config.yaml")
    assert method == "endofm" and cfg.epochs == shipped["settings"]["epochs"] == 15
    assert cfg.views.local_size == shipped["settings"]["views"]["local_size"] == 32
    data = yaml.safe_load(TINY.read_text())
    data["pretrain"]["variants"] = {"default": {}, "short": {"epochs": 1, "views": {"local_size": 16}}}
    two = tmp_path / "two.yaml"
    two.write_text(yaml.safe_dump(data))
    _, short = load_pretrain_settings(two, "short")
    assert short.epochs == 1 and short.views.local_size == 16
    assert short.out_dim == 64 and short.views.global_size == 16  # the rest from the shared settings
    assert load_pretrain_settings(two)[1].epochs == data["pretrain"]["settings"]["epochs"]
    # the workflow's per-job file (one variant resolved) reads back to the same settings, without --variant
    resolved = tmp_path / "pretrain.yaml"
    resolved.write_text(yaml.safe_dump({"method": "endofm", "pretrain": to_dict(short)}))
    assert load_pretrain_settings(resolved) == ("endofm", short)
    with pytest.raises(ConfigError, match=r"pretrain.yaml: holds one run's resolved settings.*drop --variant x"):
        load_pretrain_settings(resolved, "x")
    with pytest.raises(
        ConfigError,
        match=r"two.yaml: pretrain.variants: no variant 'long'; known \(ablation arms included\): default, short",
    ):
        load_pretrain_settings(two, "long")


# 2. pretrain errors are one line; -v works; help is fast and named


def test_pretrain_errors_are_one_line_and_leave_nothing(tmp_path, clip_csv, capsys):
    out = tmp_path / "out"
    line = fails(
        ["pretrain", "--config", str(TINY), "--clips", str(tmp_path / "no/clips.csv"), "--out", str(out)], capsys
    )
    assert str(tmp_path / "no/clips.csv") in line and "extract-clips" in line
    line = fails(["pretrain", "--config", str(TINY), "--clips", str(clip_csv), "--out", str(out)], capsys)
    assert f"{clip_csv}: missing column(s)" in line
    assert main(["-v", "pretrain", "--config", str(TINY), "--clips", str(clip_csv), "--out", str(out)]) == 1
    err = capsys.readouterr().err  # -v: the same line, after the traceback for a bug report
    assert "Traceback" in err and err.strip().splitlines()[-1] == line
    data = yaml.safe_load(TINY.read_text())
    data["pretrain"]["settings"]["batch_size_per_gpu"] = -2
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    line = fails(["pretrain", "--config", str(bad), "--clips", str(clip_csv), "--out", str(out)], capsys)
    line_no = bad.read_text().splitlines().index("    batch_size_per_gpu: -2") + 1
    assert line.endswith(f"{bad}:{line_no}: config.pretrain.settings.batch_size_per_gpu must be >= 1, got -2")
    line = fails(
        ["pretrain", "--config", str(TINY), "--variant", "nope", "--clips", str(clip_csv), "--out", str(out)], capsys
    )
    assert "no variant 'nope'" in line
    assert not out.exists()


def test_pretrain_help_is_the_endofm_command_and_does_not_import_torch():
    code = (
        "import sys\nfrom endofm.cli import main\ntry:\n    main(['pretrain', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: endofm pretrain")
    assert "--variant" in proc.stdout and proc.stdout.strip().endswith("False")


# 3. misspelt keys: one line, file:line, dotted key, nearest valid key


def test_misspelt_workflow_key_names_file_line_and_nearest_key(tmp_path, capsys):
    text = TINY.read_text().replace("\npretrain:", "\npretrian:").replace("clip_length:", "clip_lenght:")
    path = tmp_path / "typo.yaml"
    path.write_text(text)
    line_no = text.splitlines().index("pretrian:") + 1
    line = fails(["synth", "--config", str(path)], capsys)
    assert (
        line == (f"endofm synth: error: {path}:{line_no}: config: unknown key 'pretrian' (did you mean 'pretrain'?)")
        or "clip_lenght" in line
    )
    path.write_text(TINY.read_text().replace("clip_length:", "clip_lenght:"))
    line = fails(["synth", "--config", str(path)], capsys)
    assert f"{path}:" in line and "config.clips: unknown key 'clip_lenght' (did you mean 'clip_length'?)" in line


def test_schema_errors_are_one_line_with_the_dotted_key():
    data = yaml.safe_load(TINY.read_text())
    data["data"]["origin"] = "imaginary"
    with pytest.raises(ConfigError) as err:
        check_schema(data, ROOT / "config/schema.yaml")
    assert str(err.value).startswith("config.data.origin: expected one of ['synthetic', 'real'], got 'imaginary'")
    assert err.value.key == "config.data.origin" and "\n" not in str(err.value)
    data = yaml.safe_load(TINY.read_text())
    data["finetune"]["polypdiag"]["trian"] = {}
    with pytest.raises(
        ConfigError, match=r"^config.finetune.polypdiag: unknown key 'trian' \(did you mean 'train'\?\)$"
    ):
        check_schema(data, ROOT / "config/schema.yaml")


# 4. YAML syntax errors; data errors inside a job


def test_yaml_syntax_error_names_file_and_line(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("data:\n  origin: synthetic\n  benchmarks: [kumc\nclips: {}\n")
    with pytest.raises(ConfigError, match=r"broken.yaml:4:\d+: YAML syntax error"):
        load_yaml(path)
    line = fails(["index", "kumc", "--config", str(path)], capsys)
    assert re.search(r"broken.yaml:4:\d+: YAML syntax error", line)


JOB = """
import sys
from endofm.logs import job_log
with job_log(sys.argv[1]):
    print("working")
    if sys.argv[2] == "user":
        raise ValueError("data/x.csv:3: label must be 0 or 1, got '2'")
    raise ZeroDivisionError("a bug")
"""


def test_job_user_error_is_one_line_in_the_log_and_exit_1(tmp_path):
    log = tmp_path / "logs/job.log"
    proc = subprocess.run([sys.executable, "-c", JOB, str(log), "user"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1
    text = log.read_text()
    assert "working" in text and "error: data/x.csv:3: label must be 0 or 1, got '2'" in text
    assert "Traceback" not in text + proc.stderr
    assert proc.stderr.strip() == f"endofm: error: data/x.csv:3: label must be 0 or 1, got '2' (log: {log})"
    proc = subprocess.run([sys.executable, "-c", JOB, str(log), "bug"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and "Traceback" in log.read_text()  # a bug keeps its traceback


# 5. checkpoints


@pytest.fixture
def video(tmp_path: Path) -> Path:
    path = tmp_path / "v.mp4"
    write_video(path, (np.full((32, 32, 3), 10 * k, np.uint8) for k in range(10)), fps=25)
    return path


def _micro_backbone_pt(path: Path) -> tuple[Path, BackboneConfig]:
    from endofm.pretraining.endofm import build_model
    from endofm.pretraining.train import export_backbone

    _, cfg = load_pretrain_settings(TINY)
    torch.manual_seed(0)
    return export_backbone(build_model(cfg), path, cfg), cfg.backbone


def test_non_dict_and_foreign_checkpoints_are_named(tmp_path, video, capsys):
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3), "fc.weight": torch.zeros(2, 4)}, tmp_path / "convnet.pt")
    for name, kind in (("tensor.pt", "Tensor"), ("list.pt", "list")):
        for args in (["features", str(tmp_path / name), str(video), "--out", str(tmp_path / "f.npz")],
                     ["convert-checkpoint", str(tmp_path / name), str(tmp_path / "o.pt"), "--to", "ours"]):  # fmt: skip
            assert fails(args, capsys).endswith(f"{tmp_path / name}: expected a dict at the top level, got {kind}")
    line = fails(["convert-checkpoint", str(tmp_path / "convnet.pt"), str(tmp_path / "o.pt"), "--to", "ours"], capsys)
    assert f"{tmp_path / 'convnet.pt'}: not an official pretraining checkpoint" in line
    line = fails(["features", str(tmp_path / "convnet.pt"), str(video), "--out", str(tmp_path / "f.npz")], capsys)
    assert str(tmp_path / "convnet.pt") in line and "<dict>" not in line
    assert "--backbone" in line and len(line) < 1000
    assert not (tmp_path / "o.pt").exists() and not (tmp_path / "f.npz").exists()


def test_our_backbone_pt_carries_its_backbone(tmp_path, video, capsys):
    path, backbone = _micro_backbone_pt(tmp_path / "backbone.pt")
    assert saved_backbone(path) == backbone and backbone.name == "vit_micro_patch8"
    assert load_checkpoint(path)["teacher"].keys() >= {"backbone.cls_token", "backbone.blocks.0.attn.qkv.weight"}
    assert load_pretrained_backbone(path).config == backbone  # no backbone named
    out = tmp_path / "f.npz"
    args = ["features", str(path), str(video), "--out", str(out), "--size", "32", "--clip-frames", "4"]
    assert main(args) == 0
    assert np.load(out)["embedding"].shape == (2, 32)  # micro width 32: 10 frames, windows at 0 and 6 (tail)
    line = fails(["convert-checkpoint", str(path), str(tmp_path / "o.pt"), "--to", "ours"], capsys)
    assert line.endswith(f"{path}: already in our format; nothing to convert")
    official = tmp_path / "official.pth"
    assert main(["convert-checkpoint", str(path), str(official), "--to", "official"]) == 0
    capsys.readouterr()
    line = fails(["convert-checkpoint", str(official), str(tmp_path / "o2.pth"), "--to", "official"], capsys)
    assert line.endswith(
        f"{official}: already in the official layout; --to official converts our checkpoint.pt/backbone.pt"
    )


# 6. PolypDiag: one video in two splits


def test_polypdiag_video_in_train_and_val_names_both_lines(tmp_path):
    root = tmp_path / "PolypDiag"
    (root / "splits").mkdir(parents=True)
    for name in ("a.mp4", "b.mp4"):
        write_video(root / "videos" / name, (np.zeros((16, 16, 3), np.uint8) for _ in range(3)), fps=25)
    (root / "splits/train.txt").write_text("a.mp4,1\nb.mp4,0\n")
    (root / "splits/val.txt").write_text("\nb.mp4,0\n")
    val, train = root / "splits/val.txt", root / "splits/train.txt"
    with pytest.raises(ValueError) as err:
        index_polypdiag(root)
    assert str(err.value) == f"{val}:2: video 'b.mp4' is also listed in {train}:2; a video belongs to one split"


# 7. CVC without videolist.txt; a mask that is not a TIFF


def _cvc(root: Path, numbers) -> Path:
    for sub in ("Original", "Ground Truth"):
        (root / "CVC-ClinicDB" / sub).mkdir(parents=True, exist_ok=True)
    for i in numbers:
        tifffile.imwrite(root / "CVC-ClinicDB/Original" / f"{i}.tif", np.zeros((4, 4, 3), np.uint8))
        tifffile.imwrite(root / "CVC-ClinicDB/Ground Truth" / f"{i}.tif", np.zeros((4, 4), np.uint8))
    return root


def test_cvc_official_lists_need_all_frames_and_say_so(tmp_path):
    root = _cvc(tmp_path, range(1, 104))
    with pytest.raises(FileNotFoundError) as err:
        index_cvc(root)
    msg = str(err.value)
    assert msg.startswith(f"{root / 'videolist.txt'}: not found, so the official CVC-ClinicDB sequence lists are used")
    assert "need frames 1-612.tif" in msg and re.search(r"lacks \d+ of them \(104, 105, ", msg)


def test_cvc_mask_that_is_not_a_tiff_is_named(tmp_path):
    root = _cvc(tmp_path, range(1, 5))
    (root / "videolist.txt").write_text("a 1 2 train\nb 3 2 test\n")
    bad = root / "CVC-ClinicDB/Ground Truth/3.tif"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not a tiff")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(bad))}: not a readable TIFF image"):
        index_cvc(root)


# 8. arguments checked before work; "run ... first" hints; a corrupt run.json


def test_features_arguments_are_checked_before_any_work(tmp_path, video, capsys, monkeypatch):
    import endofm.features

    def boom(*a, **k):
        raise AssertionError("features computed before the arguments were checked")

    monkeypatch.setattr(endofm.features, "extract_features", boom)
    line = fails(["features", str(tmp_path / "absent.pt"), str(video), "--out", str(tmp_path / "f.txt")], capsys)
    assert line.endswith(f"{tmp_path / 'f.txt'}: feature files are .npz or .parquet, not .txt")
    path, _ = _micro_backbone_pt(tmp_path / "backbone.pt")
    line = fails(["features", str(path), str(video), "--out", str(tmp_path / "f.npz"), "--size", "30"], capsys)
    assert line.endswith("--size 30: must be a multiple of the backbone's patch size 8")
    line = fails(["features", str(path), str(video), "--out", str(tmp_path / "f.npz"), "--stride", "0"], capsys)
    assert line.endswith("--stride must be >= 1, got 0")


def _config_in(tmp_path: Path) -> Path:
    data = yaml.safe_load(TINY.read_text())
    data["data"]["benchmarks_dir"] = str(tmp_path / "benchmarks")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_missing_inputs_say_what_to_run_first(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _config_in(tmp_path)
    line = fails(["finetune", "polypdiag", "--config", str(config), "--method", "endofm"], capsys)
    assert line.endswith(
        "results/pretrain/endofm/default/backbone.pt: backbone of method endofm not found; "
        f"run `snakemake pretrain --configfile={config}` (endofm, variant default) first"
    )
    line = fails(["finetune", "polypdiag", "--config", str(config), "--method", "scratch"], capsys)
    manifest = tmp_path / "benchmarks/polypdiag/manifest.csv"
    assert line.endswith(
        f"{manifest}: polypdiag index not found; run `endofm index polypdiag --config {config}` "
        f"(or `snakemake data --configfile={config}`) first"
    )
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text('{"benchmark": "kumc", ')
    line = fails(["evaluate", str(run), "--config", str(config)], capsys)
    assert f"{run / 'run.json'}: not a readable run record" in line
    assert not (run / "metrics.json").exists()


# 9. help texts


def test_every_argument_has_help_and_defaults_are_shown(capsys):
    parser = build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, (name, action.dest)
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 0)" in out and "(default: clean)" in out and "(default: full)" in out
    assert "paper: the official splits" in out and "clean: validation carved" in out
    assert "full: the whole backbone" in out and "frozen: backbone fixed" in out


def test_sources_with_a_missing_config_fails(tmp_path, capsys):
    line = fails(["sources", "--config", str(tmp_path / "nope.yaml")], capsys)
    assert line.endswith(f"{tmp_path / 'nope.yaml'}: config file not found")


# 10. logs


def test_progress_writes_lines_not_redraws_in_a_log(caplog, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    bar = progress(range(5), desc="epoch 0/2", unit="step")
    assert isinstance(bar, LineProgress)
    bar.interval = 0.0
    with caplog.at_level(logging.INFO, logger="endofm.progress"):
        for i in bar:
            bar.set_postfix(loss=f"{i:.1f}")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 6 and all("\r" not in line for line in lines)
    assert lines[0].startswith("epoch 0/2: 1/5 step in ") and lines[-1].startswith("epoch 0/2: 5/5 step done in ")
    assert lines[-1].endswith("loss=4.0")


def test_index_prints_json_and_logs_a_summary(tiny_benchmarks, tmp_path, capsys):
    raw = tiny_benchmarks["kumc"].raw
    assert main(["index", "kumc", "--config", str(TINY), "--raw", str(raw), "--out", str(tmp_path / "idx")]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["benchmark"] == "kumc" and set(summary["splits"]) == {"train", "val", "test"}
    logged = [line for line in captured.err.splitlines() if "endofm.data.benchmarks" in line]
    assert len(logged) == 1 and f"kumc: indexed {raw} -> {summary['rows']} rows (train " in logged[0]


def test_user_error_is_a_value_error():
    assert issubclass(UserError, ValueError) and issubclass(ConfigError, UserError)


# 11. the project's own reference page


def test_every_cited_section_of_the_reference_page_exists():
    """Docstrings cite ``docs/original.md §N``: each section must be a
    heading of docs/original.md, numbered as cited."""
    text = (ROOT / "docs/original.md").read_text()
    headings = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)[. ]", text, flags=re.M))
    assert {str(n) for n in range(1, 11)} <= headings
    cited = set()
    for path in [*ROOT.glob("endofm/**/*.py"), *ROOT.glob("tests/*.py"), *ROOT.glob("workflow_scripts/*.py")]:
        text = path.read_text()
        for match in re.finditer(r"docs/original\.md,? *(?:table |section )?([§\d][§\d.,\- ]*)", text):
            cited |= set(re.findall(r"\d+(?:\.\d+)?", match.group(1)))
    assert len(cited) > 10 and cited <= headings, sorted(cited - headings)


# 9. values that enter a result are checked where they enter (issue 21): each fails on the code before it


def test_cvc_masks_in_0_1_are_an_error_not_an_empty_benchmark(tmp_path, capsys):
    """0/1 masks used to index as "0 polyp frames" and then score Dice 1.0."""
    root = _cvc(tmp_path / "raw", range(1, 5))
    (root / "videolist.txt").write_text("a 1 2 train\nb 3 2 test\n")
    for i in range(1, 5):
        mask = np.zeros((4, 4), np.uint8)
        mask[1:3, 1:3] = 1
        tifffile.imwrite(root / "CVC-ClinicDB/Ground Truth" / f"{i}.tif", mask)
    out = tmp_path / "index"
    line = fails(["index", "cvc12k", "--config", str(TINY), "--raw", str(root), "--out", str(out)], capsys)
    assert f"{root / 'CVC-ClinicDB/Ground Truth/1.tif'}: mask values {{0, 1}} but none is 255" in line
    assert line.endswith("(for masks saved as 0/1 set data.cvc12k_polyp_value: 1)")
    assert not (out / "manifest.json").exists()
    # declared 0/1 masks index and score as 0/255 ones; a 255 under that declaration is an error
    config = tmp_path / "masks01.yaml"
    config.write_text(yaml.safe_dump({**TINY_DATA, "data": {**TINY_DATA["data"], "cvc12k_polyp_value": 1}}))
    assert main(["index", "cvc12k", "--config", str(config), "--raw", str(root), "--out", str(out)]) == 0
    capsys.readouterr()
    from endofm.data.benchmarks import read_manifest
    from endofm.data.cvc import CVCSequenceDataset, polyp_values, read_mask

    manifest = read_manifest(out / "manifest.csv")
    assert manifest["polyp_pixels"].tolist() == [4, 4, 4, 4] and polyp_values(manifest) == [1, 1, 1, 1]
    item = CVCSequenceDataset(manifest, root, "test")[0]
    assert item["masks"].sum().item() == 8 and item["masks"].max().item() == 1
    assert read_mask(root / "CVC-ClinicDB/Ground Truth/3.tif", 1)[1:3, 1:3].all()
    tifffile.imwrite(root / "CVC-ClinicDB/Ground Truth/2.tif", np.full((4, 4), 255, np.uint8))
    line = fails(
        ["index", "cvc12k", "--config", str(config), "--raw", str(root), "--out", str(tmp_path / "i2")], capsys
    )
    assert line.endswith(f"{root / 'CVC-ClinicDB/Ground Truth/2.tif'}: mask values {{255}} but data.cvc12k_polyp_value "
                         "is 1 (0/1 masks); for CVC-ClinicDB's 0/255 masks set it to 255")  # fmt: skip
    # all-zero masks: no frame of a split has a polyp
    for i in range(1, 5):
        tifffile.imwrite(root / "CVC-ClinicDB/Ground Truth" / f"{i}.tif", np.zeros((4, 4), np.uint8))
    out = tmp_path / "index3"
    line = fails(["index", "cvc12k", "--config", str(TINY), "--raw", str(root), "--out", str(out)], capsys)
    assert f"{root}: no train frame has a polyp pixel (255) in its mask" in line
    assert not (out / "manifest.json").exists()


def _kumc(root: Path) -> Path:
    """The smallest KUMC layout: one annotated frame of video 1 in each split."""
    from test_kumc import jpeg, voc, xml

    for split in ("train2019", "val2019", "test2019"):
        folder = "" if split == "train2019" else "1/"
        jpeg(root / split / "Image" / f"{folder}1.jpg", 50)
        xml(root / split / "Annotation" / f"{folder}1.xml", voc("1", "1.jpg", [("adenomatous", 2, 2, 9, 9)]))
    return root


def test_kumc_box_coordinate_nan_is_named(tmp_path, capsys):
    """``<xmax>nan</xmax>`` used to pass and put NaN into coco_train.json."""
    root = _kumc(tmp_path / "KUMC")
    from test_kumc import voc

    bad = root / "train2019/Annotation/1.xml"
    bad.write_text(voc("1", "1.jpg", [("adenomatous", 2, 2, "nan", 9)]))
    out = tmp_path / "index"
    line = fails(["index", "kumc", "--config", str(TINY), "--raw", str(root), "--out", str(out)], capsys)
    assert line.endswith(f"{bad}: <xmax> in <object> 1 must be a finite number, got 'nan'")
    assert not (out / "manifest.json").exists() and not list(out.glob("coco_*.json"))


@pytest.fixture
def polypdiag_run(tiny_benchmarks, tmp_path, monkeypatch):
    """A finished PolypDiag run (perfect predictions) and a config whose data folders are the tiny index."""
    from test_evaluation import _perfect_run

    bench = tiny_benchmarks["polypdiag"]
    run = tmp_path / "run"
    _perfect_run("polypdiag", bench.manifest, bench.raw, run)
    config = {**TINY_DATA, "data": {**TINY_DATA["data"], "raw_dir": str(bench.raw.parent),
                                    "benchmarks_dir": str(bench.manifest.parent.parent)}}  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    return run, tmp_path / "config.yaml"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda f: f.assign(prob_1=7.5), "probabilities must be numbers in [0, 1]; line 2 "),
        (lambda f: f.assign(prob_0="abc"), "probabilities must be numbers in [0, 1]; line 2 "),
        (lambda f: f.rename(columns={"prob_1": "p1"}), "expected the columns sample_id, prob_0, prob_1, got "),
    ],
    ids=["out-of-range", "not-a-number", "wrong-columns"],
)
def test_bad_predictions_fail_evaluate_and_write_nothing(polypdiag_run, capsys, edit, expected):
    import pandas as pd

    run, config = polypdiag_run
    predictions = run / "predictions.csv"
    edit(pd.read_csv(predictions, dtype={"sample_id": str})).to_csv(predictions, index=False)
    out = run.parent / "m.json"
    line = fails(["evaluate", str(run), "--config", str(config), "--out", str(out)], capsys)
    assert f"{predictions}: {expected}" in line and not out.exists()


def _metrics_file(root: Path, **changes) -> Path:
    path = root / "results/metrics/polypdiag/endofm/default/clean/full/seed0.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": "polypdiag", "method": "endofm", "variant": "default", "protocol": "clean",
              "mode": "full", "seed": 0, "metrics": {"f1": 0.75, "auroc": 0.8, "n": 16}}  # fmt: skip
    record.update(changes)
    path.write_text(json.dumps(record))
    return path


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"metrics": {"f1": 7.5, "n": 16}}, "malformed metrics file: f1 = 7.5; scores are fractions in [0, 1]"),
        ({"metrics": {"f1": -0.1}}, "malformed metrics file: f1 = -0.1; scores are fractions in [0, 1]"),
        ({"seed": 3}, "the file's run differs from its path: seed 3 (path: 0)"),
        ({"method": "vcl"}, "the file's run differs from its path: method 'vcl' (path: 'endofm')"),
    ],
    ids=["f1-7.5", "f1-negative", "seed", "method"],
)
def test_report_refuses_metrics_out_of_range_or_not_matching_their_path(tmp_path, changes, expected):
    """A metrics file with f1 7.5 used to show as 750.0; one whose seed or method disagreed with its path was
    taken or dropped silently."""
    from endofm.report.collect import ReportError, collect_metrics, read_metrics_file

    path = _metrics_file(tmp_path, **changes)
    with pytest.raises(ReportError) as err:
        collect_metrics([path])
    assert str(err.value) == f"{path}: {expected}"
    assert read_metrics_file(_metrics_file(tmp_path / "good"))["metrics"]["n"] == 16  # counts are not scores


def test_yaml_exponent_without_a_dot_gets_the_fix(tmp_path, capsys):
    """``lr: 1e-3`` is a string to YAML; the error used to say only "expected a number"."""
    config = tmp_path / "lr.yaml"
    config.write_text("pretrain:\n  settings:\n    lr: 1e-3\n")
    line = fails(["config", "show", "--config", str(config)], capsys)
    assert f"{config}" in line and "config.pretrain.settings.lr: expected a number, got the string '1e-3'" in line
    assert line.endswith("write 1.0e-3") and yaml.safe_load("x: 1.0e-3")["x"] == 0.001
    data = yaml.safe_load(TINY.read_text())
    data["pretrain"]["settings"]["lr"] = "5e4"  # what the workflow's schema check sees
    with pytest.raises(ConfigError, match=r"got the string '5e4': .* write 5\.0e\+4$"):
        check_schema(data, ROOT / "config/schema.yaml")


def test_an_empty_config_resolves(tmp_path, capsys):
    """The built-in defaults used to contradict each other: every method (st_adapter included) with the
    TransUNet decoder, which st_adapter cannot run."""
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    assert main(["config", "show", "--config", str(empty)]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["finetune"]["methods"] == ["endofm", "scratch", "vcl"]
    assert shown["finetune"]["cvc12k"]["decoder"] == "transunet"


def test_kumc_frame_that_is_not_an_image_is_named(tmp_path, capsys):
    """A non-JPEG ``1.jpg`` used to end in a PIL.UnidentifiedImageError traceback."""
    root = _kumc(tmp_path / "KUMC")
    bad = root / "val2019/Image/1/1.jpg"
    bad.write_text("not a JPEG\n")
    out = tmp_path / "index"
    line = fails(["index", "kumc", "--config", str(TINY), "--raw", str(root), "--out", str(out)], capsys)
    assert f"{bad}: not a readable image (cannot identify image file" in line
    assert not (out / "manifest.json").exists()


@pytest.mark.parametrize("command", [["finetune", "polypdiag"], ["synth"]])
def test_negative_seed_names_the_flag(command, capsys):
    """``--seed -1`` used to fail later with "expected non-negative integer" and no flag."""
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--seed", "-1"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert (
        err.strip().splitlines()[-1]
        == f"endofm {command[0]}: error: argument --seed: expected an integer >= 0, got '-1'"
    )


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    """Ctrl-C used to print a KeyboardInterrupt traceback."""
    import endofm.cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(endofm.cli, "cmd_sources", interrupted)
    assert main(["sources"]) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["endofm sources: interrupted"]


def test_binary_config_is_named(tmp_path, capsys):
    """A binary file given as config used to fail with a bare UTF-8 decode error."""
    config = tmp_path / "weights.yaml"
    config.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    line = fails(["config", "show", "--config", str(config)], capsys)
    assert line.endswith(f"{config}: not a YAML text file (byte 0 is not UTF-8)")


def test_negative_seed_in_the_config_fails_at_start(tmp_path, capsys):
    """``finetune.seeds: [-1]`` used to plan and then fail with a MissingInputException about seed-1.json."""
    config = tmp_path / "seeds.yaml"
    config.write_text("finetune:\n  seeds: [-1]\n")
    line = fails(["config", "show", "--config", str(config)], capsys)
    assert line.endswith(f"{config}:2: config.finetune.seeds[0] must be >= 0, got -1")


def test_a_second_finetune_on_the_same_folder_fails_at_once(polypdiag_run, capsys):
    """Two processes with the same --out used to both run and both exit 0."""
    import socket

    from endofm.io import LOCK_NAME, output_lock

    run, config = polypdiag_run
    out = run.parent / "busy"
    with output_lock(out):
        holder = (out / LOCK_NAME).read_text()
        line = fails(
            ["finetune", "polypdiag", "--method", "scratch", "--config", str(config), "--out", str(out)], capsys
        )
        assert f"{out}: in use by PID {os.getpid()} on {socket.gethostname()} since " in line
        assert (out / LOCK_NAME).read_text() == holder and sorted(p.name for p in out.iterdir()) == [LOCK_NAME]


def _unprivileged(command: list[str]) -> list[str]:
    """``command`` run as a user the file system's permissions apply to (root ignores a folder's mode)."""
    if os.geteuid() != 0:
        return command
    import shutil

    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a read-only folder cannot be made")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]


@pytest.fixture
def readonly_results(tiny_benchmarks):
    """A finished PolypDiag run and its config in a world-readable folder, and a results folder no one may
    write into (as another user when the tests run as root)."""
    import shutil
    import tempfile

    from test_evaluation import _perfect_run

    base = Path(tempfile.mkdtemp(prefix="endofm-ro-"))
    base.chmod(0o755)
    bench = tiny_benchmarks["polypdiag"]
    shutil.copytree(bench.raw, base / "raw/polypdiag")
    shutil.copytree(bench.manifest.parent, base / "index/polypdiag")
    _perfect_run("polypdiag", base / "index/polypdiag/manifest.csv", base / "raw/polypdiag", base / "run")
    config = {**TINY_DATA, "data": {**TINY_DATA["data"], "raw_dir": str(base / "raw"),
                                    "benchmarks_dir": str(base / "index")}}  # fmt: skip
    (base / "config.yaml").write_text(yaml.safe_dump(config))
    clips = base / "clips.csv"
    clips.write_text("path,num_frames,source\nclip.mp4,32,synthetic_colonoscopy\n")
    (base / "results").mkdir()
    (base / "results").chmod(0o555)
    for path in base.rglob("*"):
        if path != base / "results":
            path.chmod(0o755 if path.is_dir() else 0o644)
    yield base
    shutil.rmtree(base)


@pytest.mark.parametrize(
    ("args", "target"),
    [
        (
            ["evaluate", "{base}/run", "--config", "{base}/config.yaml", "--out", "{base}/results/m.json"],
            "{base}/results",
        ),
        (
            [
                "finetune",
                "polypdiag",
                "--method",
                "scratch",
                "--config",
                "{base}/config.yaml",
                "--out",
                "{base}/results/run",
            ],
            "{base}/results/run",
        ),
        (
            ["pretrain", "--config", str(TINY), "--clips", "{base}/clips.csv", "--out", "{base}/results/pt"],
            "{base}/results/pt",
        ),
    ],  # fmt: skip
    ids=["evaluate", "finetune", "pretrain"],
)
def test_a_read_only_results_folder_is_one_line(readonly_results, args, target):
    """A read-only results folder used to give OSError tracebacks from finetune, evaluate and pretrain."""
    base = str(readonly_results)
    args = [a.replace("{base}", base) for a in args]
    command = _unprivileged([sys.executable, "-m", "endofm.cli", *args])
    done = subprocess.run(command, capture_output=True, text=True, cwd=base, timeout=300,
                          env={**os.environ, "HOME": base, "MPLCONFIGDIR": base})  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"endofm {args[0]}: error: {target.replace('{base}', base)}")
    assert "permission denied; check the folder's permissions or choose another results folder" in last
    assert os.listdir(readonly_results / "results") == []


def _dry_run(*args: str) -> subprocess.CompletedProcess:
    snakemake = Path(sys.executable).parent / "snakemake"
    return subprocess.run([str(snakemake), "all", "-n", "--cores", "1", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip


def _workflow_error(done: subprocess.CompletedProcess) -> str:
    """The one line a workflow's config error prints after Snakemake's ``WorkflowError in file ...`` line."""
    assert done.returncode == 1, done.stderr
    lines = (done.stdout + done.stderr).splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("WorkflowError"))
    return lines[at + 1]


def test_config_errors_name_the_overlay_line_and_the_config_form(tmp_path):
    """Errors of an overlay's list item named config/config.yaml, or the overlay without a line; `--config
    seeds=3` failed without the form --config expects, and nested --config values stayed strings."""
    overlay = tmp_path / "my overlay.yaml"
    overlay.write_text("finetune:\n  seeds:\n    - 0\n    - -1\n")
    line = _workflow_error(_dry_run("--configfile", str(overlay)))
    assert line == f"{overlay}:4: config.finetune.seeds.1: -1 is less than the minimum of 0"
    line = _workflow_error(_dry_run("--config", "seeds=3"))
    assert line.startswith("--config seeds: config: unknown key 'seeds' (expected one of ablations, clips, ")
    assert line.endswith("; --config takes top-level keys with YAML values, e.g. --config 'finetune={seeds: [0, 1]}'")
    line = _workflow_error(_dry_run("--config", "finetune={seeds: [0, -2]}"))
    assert line.startswith("--config finetune: config.finetune.seeds.1: -2 is less than the minimum of 0; ")


def test_nested_config_values_are_typed_as_yaml():
    from endofm.config import command_line_values, config_file_of

    typed = command_line_values({"finetune": {"seeds": ["0", "1"], "threads": "2", "gpus": ""}, "x": "a"})
    assert typed == {"finetune": {"seeds": [0, 1], "threads": 2, "gpus": ""}, "x": "a"}
    assert config_file_of("config.finetune.seeds[1]", ["a.yaml"], typed) == "--config finetune"
    assert config_file_of("config.finetune.modes", [ROOT / "config/config.yaml"], typed).startswith(
        f"{ROOT / 'config/config.yaml'}:"
    )

"""The ``endofm`` command: every stage of the workflow, usable without Snakemake.

Settings come from a workflow config file (``--config``, default ``config/config.yaml`` when it
exists) so the command line and the workflow never disagree; a few flags override single values.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from endofm.config import ConfigError, from_dict, to_dict

log = logging.getLogger("endofm")

DEFAULT_CONFIG = Path("config/config.yaml")


def _workflow_config(path: Path | None):
    from endofm.settings import WorkflowConfig, load_workflow_config

    if path is None:
        return load_workflow_config(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else WorkflowConfig()
    return load_workflow_config(path)


def _override(obj, **values):
    """A copy of config dataclass ``obj`` with the given non-None values, type-checked."""
    data = to_dict(obj)
    data.update({k: v for k, v in values.items() if v is not None})
    return from_dict(type(obj), data, type(obj).__name__)


def cmd_synth(args: argparse.Namespace) -> None:
    from endofm.data.synthetic import SYNTHETIC_NAMES, save_preview, synthesize

    cfg = _workflow_config(args.config)
    synth = _override(cfg.synthetic, seed=args.seed)
    if args.preview:
        print(save_preview(args.preview, synth, seed=synth.seed))
        return
    out_root = Path(args.out or cfg.data.raw_dir)
    for name in args.names or SYNTHETIC_NAMES:
        print(synthesize(name, out_root / name, synth))


def cmd_extract_clips(args: argparse.Namespace) -> None:
    from endofm.data.clips import extract_clips
    from endofm.data.sources import list_source_videos

    cfg = _workflow_config(args.config)
    clips = _override(
        cfg.clips, clip_length=args.clip_length, short_side=args.short_side, fps=args.fps, on_error=args.on_error
    )
    raw = Path(args.raw or Path(cfg.data.raw_dir) / args.source)
    out = Path(args.out or Path(cfg.data.clips_dir) / args.source)
    manifest = extract_clips(raw, list_source_videos(args.source, raw), out, args.source, clips, threads=args.threads)
    print(f"{len(manifest)} clips -> {out}")


def cmd_index(args: argparse.Namespace) -> None:
    from endofm.data.benchmarks import build_manifest

    cfg = _workflow_config(args.config)
    raw = Path(args.raw or Path(cfg.data.raw_dir) / args.benchmark)
    out = Path(args.out or Path(cfg.data.benchmarks_dir) / args.benchmark)
    summary = build_manifest(args.benchmark, raw, out)
    print(summary)


def cmd_download(args: argparse.Namespace) -> None:
    from endofm.data.download import fetch_source

    cfg = _workflow_config(args.config)
    default_root = cfg.data.raw_dir if cfg.data.origin == "real" else "resources/raw"
    raw_root = Path(args.raw_root or default_root)
    overrides = cfg.data.download_overrides.get(args.source) or None
    print(fetch_source(args.source, raw_root / args.source, Path(cfg.data.downloads_dir), overrides=overrides))


def cmd_features(args: argparse.Namespace) -> None:
    from endofm.data.layouts import FRAME_GLOB
    from endofm.data.sources import find_videos
    from endofm.features import extract_features, load_pretrained_backbone, save_features

    videos: list[Path] = []
    for path in args.videos:
        found = find_videos(path) if path.is_dir() and not any(path.glob(FRAME_GLOB)) else [path]
        if not found:
            raise FileNotFoundError(f"{path}: no video files or frame folders found")
        videos += found
    model = load_pretrained_backbone(args.checkpoint, args.backbone)
    table = extract_features(
        model,
        videos,
        clip_frames=args.clip_frames,
        frame_step=args.frame_step,
        stride=args.stride,
        size=args.size,
        batch_size=args.batch_size,
        device=args.device,
    )
    print(f"{len(table)} clips from {len(videos)} videos -> {save_features(table, args.out)}")


def cmd_convert_checkpoint(args: argparse.Namespace) -> None:
    import torch

    from endofm.io import atomic_path
    from endofm.models.checkpoint import (
        from_official,
        load_checkpoint,
        read_checkpoint_file,
        save_checkpoint,
        to_official,
    )

    if args.to == "official":
        with atomic_path(args.output) as tmp:
            torch.save(to_official(load_checkpoint(args.input)), tmp)
    else:
        save_checkpoint(args.output, **from_official(read_checkpoint_file(args.input)))
    print(args.output)


def cmd_finetune(args: argparse.Namespace) -> None:
    from endofm.models.vit import BackboneConfig
    from endofm.settings import run_backbone, run_backbone_options
    from endofm.tasks.finetune import RunSpec
    from endofm.tasks.runs import finetune_benchmark

    cfg = _workflow_config(args.config)
    bench = args.benchmark
    if args.checkpoint is not None:
        method, variant = "external", "external"
        backbone = BackboneConfig(name=args.backbone) if args.backbone else cfg.pretrain.variant("default").backbone
        checkpoint, options = args.checkpoint, {}
    else:
        method = args.method
        variant = args.variant or cfg.finetune.method_variants(method)[0]
        backbone, checkpoint = run_backbone(cfg, method, variant)
        options = run_backbone_options(cfg, method)
    spec = RunSpec(bench, method, variant, args.protocol, args.mode, args.seed)
    out = args.out or Path("results/finetune") / spec.path
    task = cfg.finetune.task(bench)
    if args.device:
        task.train.device = args.device
    record = finetune_benchmark(
        spec, task, Path(cfg.data.benchmarks_dir) / bench / "manifest.csv", Path(cfg.data.raw_dir) / bench, out,
        backbone, checkpoint, options,
    )  # fmt: skip
    print(f"{spec.path}: selected epoch {record['selection']['epoch']} -> {out}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    import json

    from endofm.tasks.runs import evaluate_run

    cfg = _workflow_config(args.config)
    run = json.loads((args.run_dir / "run.json").read_text())
    bench = run["benchmark"]
    out = args.out or args.run_dir / "metrics.json"
    record = evaluate_run(
        args.run_dir, Path(cfg.data.benchmarks_dir) / bench / "manifest.csv", Path(cfg.data.raw_dir) / bench, out,
        synthetic=cfg.data.origin == "synthetic",
    )  # fmt: skip
    print(json.dumps(record["metrics"], indent=1))


def cmd_sources(args: argparse.Namespace) -> None:
    from endofm.data.sources import registry_markdown

    print(registry_markdown())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="endofm",
        description="Endo-FM reimplementation: data preparation, pretraining, fine-tuning and reports. "
        "Each subcommand is one stage of the Snakemake workflow; run `endofm <command> --help` for details.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    def add(name: str, func, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--config", type=Path, help=f"workflow config YAML (default: {DEFAULT_CONFIG} if present)")
        p.set_defaults(func=func)
        return p

    p = add("synth", cmd_synth, "Generate the built-in synthetic endoscopy corpus in the official layouts.")
    p.add_argument("names", nargs="*", help="sources/benchmarks to generate (default: all)")
    p.add_argument("--out", type=Path, help="root folder; each name is written to <out>/<name> (default: data.raw_dir)")
    p.add_argument("--seed", type=int, help="override synthetic.seed")
    p.add_argument("--preview", type=Path, help="instead of writing data, save a PNG of example frames with labels")

    p = add(
        "extract-clips", cmd_extract_clips, "Cut a pretraining source's videos into fixed-length clips (clips.csv)."
    )
    p.add_argument("source", help="source name in the registry (see `endofm sources`)")
    p.add_argument("--raw", type=Path, help="raw folder of the source (default: <data.raw_dir>/<source>)")
    p.add_argument("--out", type=Path, help="output folder (default: <data.clips_dir>/<source>)")
    p.add_argument("--clip-length", type=int, help="frames per clip (official: 150)")
    p.add_argument("--short-side", type=int, help="resize the short side to this (official: 256)")
    p.add_argument("--fps", type=int, help="frame rate written into the clips (official: 30)")
    p.add_argument(
        "--on-error", choices=["fail", "skip"], help="a bad video fails the run, or is listed in skipped.csv"
    )
    p.add_argument("--threads", type=int, default=1, help="parallel workers over videos")

    p = add("index", cmd_index, "Index a downstream benchmark's official layout into manifest.csv/json.")
    p.add_argument("benchmark", choices=["polypdiag", "cvc12k", "kumc"])
    p.add_argument("--raw", type=Path, help="benchmark folder (default: <data.raw_dir>/<benchmark>)")
    p.add_argument("--out", type=Path, help="output folder (default: <data.benchmarks_dir>/<benchmark>)")

    p = add("download", cmd_download, "Download and unpack an open source (checksummed, resumable).")
    p.add_argument("source", help="source name in the registry (see `endofm sources`)")
    p.add_argument(
        "--raw-root",
        type=Path,
        help="unpack into <raw-root>/<source> (default: data.raw_dir of a real-data config, else resources/raw)",
    )

    add("sources", cmd_sources, "List the known pretraining sources and benchmarks with access and licence.")

    # Listed for --help; main() hands its arguments to the training entry point unparsed.
    sub.add_parser("pretrain", help="Pretraining of the method --config names (= python -m endofm.pretraining.train).")

    p = add(
        "features", cmd_features, "Per-clip CLS embeddings of videos from a pretrained checkpoint (ours or official)."
    )
    p.add_argument("checkpoint", type=Path, help="our checkpoint.pt/backbone.pt or the official endo_fm.pth")
    p.add_argument("videos", type=Path, nargs="+", help="video files, frame folders, or folders searched for them")
    p.add_argument("--out", type=Path, required=True, help="output .npz (video, start_frame, embedding) or .parquet")
    p.add_argument("--backbone", help="backbone preset for files without a config (default: vit_base_patch16)")
    p.add_argument("--clip-frames", type=int, default=8, help="frames per clip (default 8, as the paper)")
    p.add_argument("--frame-step", type=int, default=1, help="take every n-th frame inside a clip")
    p.add_argument("--stride", type=int, default=8, help="a clip starts every this many frames")
    p.add_argument("--size", type=int, default=224, help="short side resize + centre crop (default 224)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")

    p = add("finetune", cmd_finetune, "Fine-tune (or read out frozen) a backbone on one benchmark under one protocol.")
    p.add_argument("benchmark", choices=["polypdiag", "cvc12k", "kumc"])
    p.add_argument(
        "--method",
        default="endofm",
        help="endofm (a pretraining variant's backbone), scratch, or a name in finetune.checkpoints",
    )
    p.add_argument(
        "--variant", help="pretraining variant for --method endofm (default: the first of finetune.variants)"
    )
    p.add_argument("--checkpoint", type=Path, help="start from this file instead (ours or the official endo_fm.pth)")
    p.add_argument("--backbone", help="backbone preset of --checkpoint (default: the pretraining config's)")
    p.add_argument(
        "--protocol", choices=["paper", "clean"], default="clean", help="paper: official splits and test-set selection"
    )
    p.add_argument(
        "--mode",
        choices=["full", "frozen"],
        default="full",
        help="frozen: backbone fixed (linear/k-NN read-outs, decoder-only fits)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the config's, auto)")
    p.add_argument(
        "--out",
        type=Path,
        help="run folder (default: results/finetune/<benchmark>/<method>/<variant>/<protocol>/<mode>/seed<k>)",
    )

    p = add("evaluate", cmd_evaluate, "Metrics of a fine-tuning run's test predictions (JSON).")
    p.add_argument("run_dir", type=Path, help="a folder written by `endofm finetune` (holds run.json)")
    p.add_argument("--out", type=Path, help="metrics JSON (default: <run_dir>/metrics.json)")

    p = add(
        "convert-checkpoint",
        cmd_convert_checkpoint,
        "Convert a pretraining checkpoint between our and the official layout.",
    )
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--to", choices=["official", "ours"], required=True, help="layout of the output file")
    return parser


def main(argv: list[str] | None = None) -> int:
    from endofm.logs import setup_logging

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["pretrain"]:
        from endofm.pretraining.train import main as pretrain_main

        return pretrain_main(argv[1:])
    args = build_parser().parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        args.func(args)
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError, KeyError) as exc:
        log.debug("error", exc_info=True)
        print(f"endofm {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

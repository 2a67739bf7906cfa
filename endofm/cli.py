"""The ``endofm`` command: every stage of the workflow, usable without Snakemake.

Settings come from a workflow config file (``--config``, default ``config/config.yaml`` when it
exists) so the command line and the workflow never disagree; a few flags override single values.

Layer: entry points (docs/architecture.md). May import: every layer; nothing in the package imports it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from endofm import paths
from endofm.config import from_dict, to_dict
from endofm.errors import UserError, error_line, is_user_error

log = logging.getLogger("endofm")

DEFAULT_CONFIG = Path("config/config.yaml")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` unless the default is unset or the help text already names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            action.default is None
            or action.default is False
            or action.default == argparse.SUPPRESS
            or "default" in text
        ):
            return text
        return super()._get_help_string(action)


def _need(path: Path, what: str, hint: str) -> Path:
    """``path``, or a UserError saying what is missing and how to make it."""
    if not Path(path).exists():
        raise UserError(f"{path}: {what} not found; {hint}")
    return Path(path)


def _workflow_config(path: Path | None):
    from endofm.settings import WorkflowConfig, load_workflow_config

    if path is None:
        return load_workflow_config(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else WorkflowConfig()
    return load_workflow_config(path)


def _config_flag(args: argparse.Namespace, flag: str = "--config ") -> str:
    """`` --config FILE`` (or another spelling of it) when the command was given one, for hints to repeat."""
    return f" {flag}{args.config}" if args.config is not None else ""


def _override(obj, **values):
    """A copy of config dataclass ``obj`` with the given non-None values, type-checked."""
    data = to_dict(obj)
    data.update({k: v for k, v in values.items() if v is not None})
    return from_dict(type(obj), data, type(obj).__name__)


def cmd_synth(args: argparse.Namespace) -> None:
    from endofm.data.synthetic import save_preview
    from endofm.tasks.benchmarks import synthesize_raw, synthetic_names

    cfg = _workflow_config(args.config)
    synth = _override(cfg.synthetic, seed=args.seed)
    if args.preview:
        print(save_preview(args.preview, synth, seed=synth.seed))
        return
    out_root = Path(args.out or cfg.data.raw_dir)
    for name in args.names or synthetic_names():
        print(synthesize_raw(name, out_root / name, synth))


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
    from endofm.tasks.benchmarks import get_benchmark

    cfg = _workflow_config(args.config)
    raw = Path(args.raw or Path(cfg.data.raw_dir) / args.benchmark)
    out = Path(args.out or Path(cfg.data.benchmarks_dir) / args.benchmark)
    benchmark = get_benchmark(args.benchmark)
    summary = benchmark.index(raw, out, benchmark.indexer.options(cfg.data))
    print(json.dumps(summary, indent=1))


def cmd_download(args: argparse.Namespace) -> None:
    from endofm.data.download import fetch_source

    cfg = _workflow_config(args.config)
    default_root = cfg.data.raw_dir if cfg.data.origin == "real" else paths.RAW
    raw_root = Path(args.raw_root or default_root)
    overrides = cfg.data.download_overrides.get(args.source) or None
    print(fetch_source(args.source, raw_root / args.source, Path(cfg.data.downloads_dir), overrides=overrides))


def cmd_features(args: argparse.Namespace) -> None:
    from endofm.data.layouts import FRAME_GLOB
    from endofm.data.sources import find_videos
    from endofm.features import check_feature_path, extract_features, load_pretrained_backbone, save_features

    check_feature_path(args.out)
    for name in ("clip_frames", "frame_step", "stride", "size", "batch_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    videos: list[Path] = []
    for path in args.videos:
        found = find_videos(path) if path.is_dir() and not any(path.glob(FRAME_GLOB)) else [path]
        if not found or not path.exists():
            raise UserError(f"{path}: no video files or frame folders found")
        videos += found
    model = load_pretrained_backbone(args.checkpoint, args.backbone)
    patch = model.config.patch_size
    if args.size % patch:
        raise UserError(f"--size {args.size}: must be a multiple of the backbone's patch size {patch}")
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
    from endofm.models.checkpoint import convert_checkpoint

    print(convert_checkpoint(args.input, args.output, args.to))


def cmd_pretrain(args: argparse.Namespace) -> None:
    import os

    from endofm.engine import set_cpu_threads
    from endofm.methods import get_method
    from endofm.pretraining.train import pretrain
    from endofm.settings import load_pretrain_settings

    if os.environ.get("RANK", "0") != "0" and not args.verbose:
        logging.getLogger().setLevel(logging.WARNING)
    config = args.config if args.config is not None or not DEFAULT_CONFIG.is_file() else DEFAULT_CONFIG
    method, cfg = load_pretrain_settings(config, args.variant, args.method)
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be >= 1, got {args.threads}")
        workers = cfg.num_workers if args.workers is None else args.workers
        intra = set_cpu_threads(args.threads, workers)
        logging.getLogger(__name__).info(
            "%d thread(s): %d torch intra-op, %d data-loading worker(s)", args.threads, intra, workers
        )
    for path in args.clips:
        _need(path, "clip manifest", "cut the source into clips first (`endofm extract-clips SOURCE`)")
    pretrain(
        cfg,
        args.clips,
        args.out,
        workers=args.workers,
        on_config_change=args.on_config_change,
        method=method,
        objective=get_method(method).objective,
    )


def cmd_finetune(args: argparse.Namespace) -> None:
    from endofm.methods import METHODS
    from endofm.models.checkpoint import saved_backbone
    from endofm.models.vit import BackboneConfig
    from endofm.settings import run_backbone, run_backbone_options
    from endofm.tasks.finetune import RunSpec
    from endofm.tasks.runs import finetune_benchmark

    cfg = _workflow_config(args.config)
    bench = args.benchmark
    if args.checkpoint is not None:
        method, variant = "external", "external"
        checkpoint = _need(args.checkpoint, "checkpoint", "give our backbone.pt/checkpoint.pt or endo_fm.pth")
        if args.backbone:
            backbone = BackboneConfig(name=args.backbone)
        else:
            backbone = saved_backbone(checkpoint) or cfg.pretrain.variant("default").backbone
        options = {}
    else:
        method = args.method
        variant = args.variant or cfg.finetune.method_variants(method)[0]
        backbone, checkpoint = run_backbone(cfg, method, variant)
        options = run_backbone_options(cfg, method)
        if checkpoint is not None:
            pretrained = method in METHODS and METHODS[method].pretrained
            hint = (
                f"run `snakemake pretrain{_config_flag(args, '--configfile=')}` ({method}, variant {variant}) first"
                if pretrained
                else "check the path"
            )
            _need(Path(checkpoint), f"backbone of method {method}", hint)
    if args.draw not in cfg.draws():
        raise UserError(f"--draw {args.draw}: the config's benchmark draws are {cfg.draws()} (synthetic.draws)")
    data = paths.benchmark_data(bench, args.draw)
    manifest = _need(
        Path(cfg.data.benchmarks_dir) / data / "manifest.csv",
        f"{data} index",
        f"run `snakemake data{_config_flag(args, '--configfile=')}` first"
        if args.draw
        else f"run `endofm index {bench}{_config_flag(args)}` (or `snakemake data{_config_flag(args, '--configfile=')}`) first",
    )
    spec = RunSpec(bench, method, variant, args.protocol, args.mode, args.seed, args.label_fraction, draw=args.draw)
    out = args.out or Path(paths.finetune_dir(spec.path))
    task = cfg.finetune.task(bench, method)
    if args.device:
        task.train.device = args.device
    record = finetune_benchmark(
        spec, task, manifest, Path(cfg.data.raw_dir) / data, out, backbone, checkpoint, options
    )  # fmt: skip
    print(f"{spec.path}: selected epoch {record['selection']['epoch']} -> {out}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from endofm.tasks.benchmarks import evaluate_run
    from endofm.tasks.evaluation import read_run
    from endofm.tasks.runs import metrics_path

    cfg = _workflow_config(args.config)
    run = read_run(args.run_dir)
    bench = run["benchmark"]
    data = paths.benchmark_data(bench, run.get("draw", 0))  # the run's benchmark draw
    manifest = _need(
        Path(cfg.data.benchmarks_dir) / data / "manifest.csv",
        f"{data} index",
        f"run `endofm index {bench}{_config_flag(args)}` (or `snakemake data{_config_flag(args, '--configfile=')}`) first",
    )
    out = args.out or metrics_path(run)
    record = evaluate_run(
        args.run_dir, manifest, Path(cfg.data.raw_dir) / data, out, synthetic=cfg.data.origin == "synthetic"
    )
    print(json.dumps(record["metrics"], indent=1))
    print(f"-> {out}", file=sys.stderr)


def cmd_report(args: argparse.Namespace) -> None:
    from endofm.config import config_hash
    from endofm.report import ReportInputs, build_report
    from endofm.settings import finetune_runs, robustness_files

    cfg = _workflow_config(args.config)
    inputs = ReportInputs(
        metrics=[paths.metrics_file(run.path) for run in finetune_runs(cfg)],
        robustness=[f for f in robustness_files(cfg) if Path(f).is_file()],  # those of finished robustness jobs
        pretrain=sorted(str(p) for p in Path(paths.PRETRAIN).glob("*/*/metrics.csv")),
        timings_dir=paths.TIMINGS,
        paper_results=args.paper_results if args.paper_results.is_file() else None,
        benchmarks_dir=cfg.data.benchmarks_dir,
        raw_dir=cfg.data.raw_dir,
    )
    written = build_report(
        inputs, args.out, cfg.report, n_seeds=len(cfg.finetune.seeds), synthetic=cfg.data.origin == "synthetic",
        settings_hash=config_hash(to_dict(cfg), digits=16), parts=("tables",) if args.tables_only else ("tables", "html"),
    )  # fmt: skip
    print("\n".join(str(p) for p in written))


#: The workflow's JSON schema, generated from the config dataclasses by `endofm config schema --write`.
SCHEMA_FILE = Path("config/schema.yaml")


def schema_text() -> str:
    """``config/schema.yaml`` as generated from :class:`~endofm.settings.WorkflowConfig`, with its header line."""
    from endofm.config import json_schema, schema_yaml
    from endofm.settings import WorkflowConfig

    header = "# Generated by `endofm config schema --write` from the config dataclasses in endofm/; do not edit.\n"
    return header + schema_yaml(json_schema(WorkflowConfig))


def cmd_config(args: argparse.Namespace) -> None:
    from endofm.config import annotated_yaml

    if args.action == "schema":
        if not args.write:
            print(schema_text(), end="")
            return
        if not SCHEMA_FILE.parent.is_dir():
            raise UserError(
                f"{SCHEMA_FILE.parent}: not found; run `endofm config schema --write` in the repository root"
            )
        from endofm.io import write_text

        print(write_text(SCHEMA_FILE, schema_text()))
        return
    cfg = _workflow_config(args.config)
    files = [args.config] if args.config is not None else [DEFAULT_CONFIG] if DEFAULT_CONFIG.is_file() else []
    print(annotated_yaml(to_dict(cfg), files), end="")


def cmd_sources(args: argparse.Namespace) -> None:
    from endofm.data.sources import registry_markdown

    if args.config is not None:
        _workflow_config(args.config)  # a named config must exist and be valid
    print(registry_markdown())


def _seed(text: str) -> int:
    """An argparse type: a seed, an integer >= 0 (argparse names the flag in its error)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from endofm.tasks.benchmarks import BENCHMARKS  # torch-free; the choices of `index` and `finetune`

    parser = argparse.ArgumentParser(
        prog="endofm",
        formatter_class=_HelpFormatter,
        description="Endo-FM reimplementation: data preparation, pretraining, fine-tuning and reports. "
        "Each subcommand is one stage of the Snakemake workflow; run `endofm <command> --help` for details.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    def add(name: str, func, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, formatter_class=_HelpFormatter)
        p.add_argument("--config", type=Path, help=f"workflow config YAML (default: {DEFAULT_CONFIG} if present)")
        p.set_defaults(func=func)
        return p

    p = add("synth", cmd_synth, "Generate the built-in synthetic endoscopy corpus in the official layouts.")
    p.add_argument("names", nargs="*", help="sources/benchmarks to generate (default: all)")
    p.add_argument("--out", type=Path, help="root folder; each name is written to <out>/<name> (default: data.raw_dir)")
    p.add_argument("--seed", type=_seed, help="override synthetic.seed")
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
    p.add_argument("benchmark", choices=list(BENCHMARKS), help="benchmark to index")
    p.add_argument("--raw", type=Path, help="benchmark folder (default: <data.raw_dir>/<benchmark>)")
    p.add_argument("--out", type=Path, help="output folder (default: <data.benchmarks_dir>/<benchmark>)")

    p = add("download", cmd_download, "Download and unpack an open source (checksummed, resumable).")
    p.add_argument("source", help="source name in the registry (see `endofm sources`)")
    p.add_argument(
        "--raw-root",
        type=Path,
        help=f"unpack into <raw-root>/<source> (default: data.raw_dir of a real-data config, else {paths.RAW})",
    )

    add("sources", cmd_sources, "List the known pretraining sources and benchmarks with access and licence.")

    p = add(
        "config",
        cmd_config,
        "Print the resolved settings of a workflow config: every key, the dataclass defaults of keys the file "
        "leaves out included, each with the file and line it came from (the same as `snakemake show_config "
        "--configfile=F`); or the JSON schema of every setting (config/schema.yaml), generated from the config "
        "dataclasses.",
    )
    p.add_argument(
        "action",
        choices=["show", "schema"],
        help="show: print the resolved settings as YAML; schema: print the JSON schema generated from the config "
        "dataclasses",
    )
    p.add_argument("--write", action="store_true", help=f"schema: write it to {SCHEMA_FILE} instead of printing it")

    p = add(
        "pretrain",
        cmd_pretrain,
        "Self-supervised pretraining of one method and variant (one process, or each process of a torchrun launch).",
    )
    p.add_argument(
        "--variant",
        help="pretraining variant of a workflow --config (default: default); a file holding one variant's "
        "resolved 'pretrain:' settings (the workflow's pretrain.yaml) takes none",
    )
    p.add_argument(
        "--method",
        help="pretrained method of a workflow --config: endofm, vcl or st_adapter (default: endofm)",
    )
    p.add_argument("--clips", type=Path, nargs="+", required=True, help="clips.csv manifests")
    p.add_argument("--out", type=Path, required=True, help="output folder (resumed if it holds a checkpoint)")
    p.add_argument("--workers", type=int, help="data-loading workers per process (default: the config's num_workers)")
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads per process: one per data-loading worker, torch's intra-op threads the rest (at least 1); "
        "default: torch's own choice",
    )
    p.add_argument(
        "--on-config-change",
        choices=["error", "restart"],
        default="error",
        help="when the checkpoint in --out cannot be continued with these settings: fail, or move the previous "
        "run to OUT/superseded/ and start afresh",
    )

    p = add(
        "features", cmd_features, "Per-clip CLS embeddings of videos from a pretrained checkpoint (ours or official)."
    )
    p.add_argument("checkpoint", type=Path, help="our checkpoint.pt/backbone.pt or the official endo_fm.pth")
    p.add_argument("videos", type=Path, nargs="+", help="video files, frame folders, or folders searched for them")
    p.add_argument("--out", type=Path, required=True, help="output .npz (video, start_frame, embedding) or .parquet")
    p.add_argument(
        "--backbone",
        help="backbone preset for files without a saved config, e.g. endo_fm.pth (default: vit_base_patch16)",
    )
    p.add_argument("--clip-frames", type=int, default=8, help="frames per clip (8 as the paper)")
    p.add_argument("--frame-step", type=int, default=1, help="take every n-th frame inside a clip")
    p.add_argument("--stride", type=int, default=8, help="a clip starts every this many frames")
    p.add_argument(
        "--size", type=int, default=224, help="short side resize + centre crop; a multiple of the patch size"
    )
    p.add_argument("--batch-size", type=int, default=8, help="clips per forward pass")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")

    p = add("finetune", cmd_finetune, "Fine-tune (or read out frozen) a backbone on one benchmark under one protocol.")
    p.add_argument("benchmark", choices=list(BENCHMARKS), help="benchmark to fine-tune on")
    p.add_argument(
        "--method",
        default="endofm",
        help="endofm (a pretraining variant's backbone), scratch, or a name in finetune.checkpoints",
    )
    p.add_argument(
        "--variant", help="pretraining variant for --method endofm (default: the first of finetune.variants)"
    )
    p.add_argument("--checkpoint", type=Path, help="start from this file instead (ours or the official endo_fm.pth)")
    p.add_argument(
        "--backbone",
        help="backbone preset of --checkpoint (default: the one saved in our files, else the pretraining config's)",
    )
    p.add_argument(
        "--protocol",
        choices=["paper", "clean"],
        default="clean",
        help="paper: the official splits, model selection on the test split; clean: validation carved from "
        "the training videos, selection on it, one final test",
    )
    p.add_argument(
        "--mode",
        choices=["full", "frozen"],
        default="full",
        help="full: the whole backbone fine-tuned (the paper's); frozen: backbone fixed (linear/k-NN read-outs, "
        "decoder-only fits)",
    )
    p.add_argument("--seed", type=_seed, default=0, help="seed of the run (initialisation, data order, clean split)")
    p.add_argument(
        "--label-fraction", type=float, default=1.0, help="train on this share of the training videos (stratified)"
    )
    p.add_argument(
        "--draw", type=int, default=0, help="benchmark draw to train and test on (synthetic.draws; 0: the main one)"
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the config's, auto)")
    p.add_argument(
        "--out",
        type=Path,
        help="run folder (default: results/finetune/<benchmark>/<method>/<variant>/<protocol>/<mode>/seed<k>)",
    )

    p = add("evaluate", cmd_evaluate, "Metrics of a fine-tuning run's test predictions (JSON).")
    p.add_argument("run_dir", type=Path, help="a folder written by `endofm finetune` (holds run.json)")
    p.add_argument(
        "--out",
        type=Path,
        help="metrics JSON (default: results/metrics/<run path>.json, where the workflow's evaluation writes it "
        "and `endofm report` reads it)",
    )

    p = add(
        "report", cmd_report, "Tables, figures and the HTML report from the metrics files of the experiment matrix."
    )
    p.add_argument("--out", type=Path, default=Path(paths.REPORT), help=f"output folder (default: {paths.REPORT})")
    p.add_argument(
        "--paper-results", type=Path, default=Path("config/paper_results.yaml"), help="the paper's reported numbers"
    )
    p.add_argument("--tables-only", action="store_true", help="write tables.{md,tex,csv} only, no figures or HTML")

    p = add(
        "convert-checkpoint",
        cmd_convert_checkpoint,
        "Convert a pretraining checkpoint between our and the official layout.",
    )
    p.add_argument(
        "input", type=Path, help="checkpoint to read (our checkpoint.pt/backbone.pt, or the official layout)"
    )
    p.add_argument("output", type=Path, help="file to write (written atomically)")
    p.add_argument(
        "--to",
        choices=["official", "ours"],
        required=True,
        help="official: the original train_ssl.py layout (weight_g/weight_v, module. student); ours: our tagged format",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user error (bad input, missing file) is one line on stderr and exit status 1
    (``-v`` adds the traceback)."""
    from endofm.jobsignals import end_with_workflow
    from endofm.logs import setup_logging

    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    end_with_workflow()  # run as a workflow's job (pretraining): end once its Snakemake has gone
    try:
        args.func(args)
    except KeyboardInterrupt:
        log.debug("interrupted", exc_info=True)
        print(f"endofm {args.command}: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports it
    except Exception as exc:
        if not is_user_error(exc):
            raise
        log.debug("error", exc_info=True)
        print(f"endofm {args.command}: error: {error_line(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

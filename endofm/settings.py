"""The workflow's configuration as typed objects: one dataclass per section of ``config/*.yaml``.

Each field declares its default, description and bounds (:func:`endofm.config.setting`);
``config/schema.yaml``, generated from them (``endofm config schema --write``), checks the YAML's shape
when Snakemake starts. :func:`load_workflow_config` then builds these objects, which check the bounds
again and what a schema cannot (that a source is in the registry, that synthetic and real sources are
not mixed).

Layer: settings (docs/architecture.md), above the report. May import every layer below it; only the
entry points (CLI, workflow) import it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from endofm import paths
from endofm.config import ConfigError, check_fields, config_error_line, from_dict, load_yaml, merge, setting, to_dict
from endofm.data.clips import ClipConfig
from endofm.data.corruptions import CORRUPTIONS, SEVERITIES
from endofm.data.sources import SOURCES, Download
from endofm.data.synthetic import PRETRAIN_SOURCES, SynthConfig
from endofm.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from endofm.methods import METHODS, get_method, load_pretrain_config, merge_settings, pretrain_method, task_backbone
from endofm.models.st_adapter import AdapterConfig, Normalization
from endofm.models.vit import BackboneConfig
from endofm.pretraining.endofm import PretrainConfig
from endofm.pretraining.train import snapshot_path
from endofm.pretraining.vcl import VCLConfig
from endofm.report import ReportConfig
from endofm.tasks.benchmarks import BENCHMARKS
from endofm.tasks.classify import ClassifyConfig
from endofm.tasks.detect import DetectConfig
from endofm.tasks.finetune import MODES, OptimConfig, RunSpec
from endofm.tasks.protocols import PROTOCOLS
from endofm.tasks.segment import SegmentConfig


@dataclass
class DataConfig:
    """Where the data stage reads and writes, and which sources and benchmarks it uses."""

    origin: Literal["synthetic", "real"] = setting(
        "synthetic", "synthetic: generate the built-in corpus; real: use downloaded or hand-placed datasets"
    )
    raw_dir: str = setting(
        f"{paths.SYNTHETIC}/raw", "Folder holding one subfolder per source/benchmark in its official layout"
    )
    clips_dir: str = setting(
        f"{paths.SYNTHETIC}/clips", "Output folder of clip extraction, one subfolder per pretraining source"
    )
    benchmarks_dir: str = setting(
        f"{paths.SYNTHETIC}/benchmarks", "Output folder of benchmark indexing, one subfolder per benchmark"
    )
    downloads_dir: str = setting(
        paths.DOWNLOADS, "Where archives of open sources are downloaded (checksummed, resumable)"
    )
    pretrain_sources: list[str] = setting(
        description="Pretraining sources by registry name (`endofm sources`): built-in ones for origin synthetic, "
        "real ones for origin real",
        factory=lambda: list(PRETRAIN_SOURCES),
        min_items=1,
    )
    benchmarks: list[str] = setting(
        description="Downstream benchmarks to index, fine-tune and evaluate on",
        factory=lambda: list(BENCHMARKS),
        each=dict(choices=BENCHMARKS),
    )
    download_overrides: dict[str, list[Download]] = setting(
        description="Per source, a list of mirrors replacing the registry's archive URLs", factory=dict
    )
    cvc12k_polyp_value: int = setting(
        255,
        "The value that marks a polyp pixel in the CVC-12k masks: 255 (CVC-ClinicDB's 0/255 masks) or 1 (masks saved "
        "as 0/1); a mask holding another value is an error naming it",
        choices=[255, 1],
    )

    def __post_init__(self) -> None:
        check_fields(self, "data")
        for name in self.pretrain_sources + list(self.download_overrides):
            if name not in SOURCES:
                raise ConfigError(f"data: unknown source {name!r}; known: {', '.join(sorted(SOURCES))}")
        for name in self.pretrain_sources:
            if SOURCES[name].kind != "pretrain":
                raise ConfigError(f"data.pretrain_sources: {name!r} is a benchmark, not a pretraining source")
            synthetic = SOURCES[name].access == "builtin"
            if synthetic != (self.origin == "synthetic"):
                raise ConfigError(
                    f"data.pretrain_sources: {name!r} is {'a built-in' if synthetic else 'a real'} source "
                    f"but data.origin is {self.origin!r}"
                )


@dataclass
class STAdapterSettings:
    """ST-Adapter's frozen image ViT and adapters (:class:`endofm.methods.STAdapter`)."""

    init: str = setting(
        "random",
        "ST-Adapter's start: a file of image ViT weights adapted as it is (the original: CLIP ViT-B/16, timm's "
        "vit_base_patch16_clip_224.openai or OpenAI's layout; a CLIP file selects CLIP's architecture), or random: "
        "the image ViT is pretrained from random weights with the Endo-FM objective on 1-frame views of the same "
        "corpus and budget",
        min_length=1,
    )
    normalization: Normalization = setting(
        "task",
        "task: the backbone takes each task's input as it is; clip: the tasks feed ImageNet-normalised RGB "
        "(finetune.per_method.st_adapter) and the backbone turns it into CLIP's normalisation (mean 0.48145466, "
        "0.4578275, 0.40821073; std 0.26862954, 0.26130258, 0.27577711) when its start is a CLIP file",
    )
    settings: dict[str, Any] = setting(
        description="Overlay on the image ViT's pretraining settings, which are pretrain.settings with every view "
        "one frame long",
        factory=dict,
        overlay=PretrainConfig,
    )
    adapter: dict[str, Any] = setting(description="The adapters", factory=dict, overlay=AdapterConfig)


@dataclass
class PretrainStage:
    """Pretraining in the workflow: the Endo-FM settings (``settings``) with named variants (ablations) as
    overlays on them, and the other pretrained methods' sections (:data:`endofm.methods.METHODS`), which
    take the budget of ``settings``."""

    gpus: int = setting(
        0, "GPUs per pretraining job (0: CPU); more than one launches torchrun with one process per GPU", minimum=0
    )
    threads: int = setting(
        2,
        "CPU threads of a pretraining job, split per process into one per data-loading worker and torch intra-op "
        "threads for the rest",
        minimum=1,
    )
    settings: PretrainConfig = setting(
        description="Endo-FM's pretraining settings; the other pretrained methods take their budget from them",
        factory=PretrainConfig,
    )
    variants: dict[str, dict[str, Any]] = setting(
        description="Named pretraining variants (ablations), at least one (e.g. default: {}): each an overlay on "
        "settings (same keys, nested), a wildcard in results/pretrain/<method>/<variant>/ and a row of the "
        "ablation table",
        factory=lambda: {"default": {}},
        overlay=PretrainConfig,
        min_items=1,
    )
    vcl: dict[str, Any] = setting(
        description="Overlay on VCL's settings: the training loop's (backbone, budget, schedules, precision, device, "
        "workers, seed, data fraction, checkpointing) come from settings unless set here; the objective's and the "
        "snapshots default to VCL's recipe",
        factory=dict,
        overlay=VCLConfig,
    )
    st_adapter: STAdapterSettings = setting(
        description="ST-Adapter's frozen image ViT and adapters", factory=STAdapterSettings
    )

    def __post_init__(self) -> None:
        check_fields(self, "pretrain")
        for name in self.variants:
            self.variant(name)  # fail at start, naming the variant, if an overlay is invalid

    def method_variants(self, method: str) -> list[str]:
        """The pretraining variants of a pretrained method: every named variant for Endo-FM, ``default`` otherwise."""
        return list(self.variants) if get_method(method).has_variants else ["default"]

    def variant(self, name: str) -> PretrainConfig:
        """The settings of variant ``name``: the shared settings with its overlay applied."""
        if name not in self.variants:
            raise ConfigError(f"pretrain.variants: no variant {name!r}; known: {', '.join(self.variants)}")
        return self.resolve(self.variants[name], f"pretrain.variants.{name}")

    def resolve(self, overlay: dict[str, Any] | None, where: str) -> PretrainConfig:
        """The shared settings with ``overlay`` applied (``where`` names it in errors; an overlay naming another
        backbone preset takes that preset whole, :func:`endofm.methods.merge_settings`)."""
        return from_dict(PretrainConfig, merge_settings(to_dict(self.settings), overlay), where)


@dataclass
class ExternalCheckpoint:
    """A backbone from a file (the released ``endo_fm.pth`` or any layout
    :mod:`endofm.models.checkpoint` reads) fine-tuned as a method of its own."""

    path: str = setting(description="Checkpoint file in any layout endofm reads (ours, official, SVT)")
    backbone: BackboneConfig = setting(description="Its backbone's settings", factory=BackboneConfig)


@dataclass
class MethodFinetune:
    """Fine-tuning settings of one method's runs that differ from the benchmarks' (``finetune.per_method``)."""

    optim: dict[str, Any] = setting(
        description="Overlay on every benchmark's train.optim for this method (e.g. ST-Adapter's own AdamW recipe)",
        factory=dict,
        overlay=OptimConfig,
    )
    benchmarks: dict[str, dict[str, Any]] = setting(
        description="Overlays on a benchmark's settings for this method, by benchmark (applied after optim; e.g. "
        "cvc12k: {decoder: light})",
        factory=dict,
    )

    def __post_init__(self) -> None:
        check_fields(self, "finetune.per_method")


@dataclass
class FinetuneStage:
    """Fine-tuning and evaluation in the workflow: the experiment matrix and each benchmark's settings.

    Methods (:data:`endofm.methods.METHODS`): ``endofm`` fine-tunes the backbone of every pretraining
    variant in ``variants``; ``vcl`` and ``st_adapter`` their one pretraining (variant ``default``);
    ``scratch`` a randomly initialised backbone of Endo-FM's size (variant ``none``); every name in
    ``checkpoints`` a backbone from that file (variant ``external``).
    """

    methods: list[str] = setting(
        description=f"Methods of the matrix: {', '.join(METHODS)} (endofm.methods.METHODS) and names of "
        "finetune.checkpoints; by default every method that can run the default CVC-12k decoder",
        factory=lambda: [m for m in METHODS if SegmentConfig.decoder in task_backbone(m).segmentation_decoders],
    )
    variants: list[str] = setting(
        description="Pretraining variants method endofm is fine-tuned from", factory=lambda: ["default"]
    )
    checkpoints: dict[str, ExternalCheckpoint] = setting(
        description="Backbones from files (e.g. the released endo_fm.pth) fine-tuned as methods of their own, by name",
        factory=dict,
    )
    seeds: list[int] = setting(
        description="Seeds of every run (mean ± std over them)", factory=lambda: [0], min_items=1, each=dict(minimum=0)
    )
    protocols: list[str] = setting(
        description="paper (official splits, test-set model selection) and/or clean (validation carved from training)",
        factory=lambda: ["paper", "clean"],
        min_items=1,
        each=dict(choices=PROTOCOLS),
    )
    modes: list[str] = setting(
        description="full (whole backbone fine-tuned) and/or frozen (backbone fixed: probes, decoder- or head-only "
        "fits)",
        factory=lambda: ["full", "frozen"],
        min_items=1,
        each=dict(choices=MODES),
    )
    label_fractions: list[float] = setting(
        description="Label efficiency: distinct shares of each protocol's training videos (sequences) a run trains "
        "on, drawn by video, stratified by label (PolypDiag), nested across fractions and seeded by the run's seed; "
        "1 is every video (run folder seed<k>), 0.25 writes seed<k>-labels25",
        factory=lambda: [1.0],
        min_items=1,
        each=dict(exclusive_minimum=0, maximum=1),
    )
    label_fraction_modes: list[str] | None = setting(
        None, "Modes that run the label fractions below 1 (null: every mode in modes)", each=dict(choices=MODES)
    )
    label_fraction_methods: list[str] | None = setting(
        None, "Methods that run the label fractions below 1 (null: every method in methods)"
    )
    label_fraction_benchmarks: list[str] | None = setting(
        None,
        "Benchmarks on which the label fractions below 1 run (null: every benchmark)",
        each=dict(choices=BENCHMARKS),
    )
    pretrain_fractions: list[float] = setting(
        description="Pretraining efficiency: runs that start from the backbone after these distinct fractions of its "
        "pretraining's optimiser steps (0: the initial weights; 1: the finished pretraining, the matrix's own runs). "
        "Each fraction below 1 makes the pretraining write a snapshot; run folder seed<k>-pt25 for 0.25. Empty: off",
        factory=list,
        each=dict(minimum=0, maximum=1),
    )
    pretrain_fraction_modes: list[str] = setting(
        description="Modes of the pretraining-fraction runs", factory=lambda: ["frozen"], each=dict(choices=MODES)
    )
    pretrain_fraction_methods: list[str] = setting(
        description="Methods of the pretraining-fraction runs: pretrained methods of methods (not scratch or a "
        "weights file)",
        factory=lambda: ["endofm"],
    )
    pretrain_fraction_benchmarks: list[str] = setting(
        description="Benchmarks of the pretraining-fraction runs (those also in data.benchmarks)",
        factory=lambda: ["polypdiag", "cvc12k"],
        each=dict(choices=BENCHMARKS),
    )
    draw_modes: list[str] = setting(
        description="Modes whose runs (label and pretraining fractions included) repeat on every benchmark draw of "
        "synthetic.draws (run folder seed<k>-draw<d>); the other modes run on the main draw (0) alone",
        factory=lambda: ["frozen"],
        each=dict(choices=MODES),
    )
    gpus: int = setting(0, "GPUs per fine-tuning job: 0 or 1 (one job per GPU)", minimum=0, maximum=1)
    threads: int = setting(4, "Threads per job: torch threads, and data-loading workers (threads - 1)", minimum=1)
    polypdiag: ClassifyConfig = setting(description="PolypDiag's settings", factory=ClassifyConfig)
    cvc12k: SegmentConfig = setting(description="CVC-12k's settings", factory=SegmentConfig)
    kumc: DetectConfig = setting(description="KUMC's settings", factory=DetectConfig)
    per_method: dict[str, MethodFinetune] = setting(
        description="Per method, fine-tuning settings that differ from the benchmarks' above (its own optimiser, "
        "decoder, normalisation), by method name",
        factory=dict,
    )

    def __post_init__(self) -> None:
        check_fields(self, "finetune")
        for method, own in self.per_method.items():
            if method not in set(METHODS) | set(self.checkpoints):
                raise ConfigError(f"finetune.per_method: {method!r} is neither a method nor a name in checkpoints")
            for bench in own.benchmarks:
                if bench not in BENCHMARKS:
                    raise ConfigError(
                        f"finetune.per_method.{method}.benchmarks: unknown benchmark {bench!r}; known: "
                        f"{', '.join(BENCHMARKS)}"
                    )
            for bench in BENCHMARKS:
                self.task(bench, method)  # fail at start, naming the overlay
        builtin = set(METHODS)
        for name in self.methods:
            if name not in builtin | set(self.checkpoints):
                raise ConfigError(
                    f"finetune.methods: {name!r} is neither a method ({', '.join(METHODS)}) nor a name in "
                    "finetune.checkpoints"
                )
        clash = builtin & set(self.checkpoints)
        if clash:
            raise ConfigError(f"finetune.checkpoints: {sorted(clash)} are reserved method names")
        if len(set(self.label_fractions)) < len(self.label_fractions):
            raise ConfigError(f"finetune.label_fractions: expected distinct values, got {self.label_fractions}")
        unknown = [m for m in self.label_fraction_methods or [] if m not in self.methods]
        if unknown:
            raise ConfigError(f"finetune.label_fraction_methods: {unknown} are not in finetune.methods")
        self._check_pretrain_fractions()

    def _check_pretrain_fractions(self) -> None:
        fractions = self.pretrain_fractions
        if len(set(fractions)) < len(fractions):
            raise ConfigError(f"finetune.pretrain_fractions: expected distinct values, got {fractions}")
        for name in self.pretrain_fraction_methods if self.snapshot_fractions() else []:
            if name not in self.methods:
                raise ConfigError(f"finetune.pretrain_fraction_methods: {name!r} is not in finetune.methods")
            if name not in METHODS or not METHODS[name].pretrained:
                raise ConfigError(
                    f"finetune.pretrain_fraction_methods: {name!r} has no pretraining of this workflow to take "
                    "snapshots of"
                )

    def snapshot_fractions(self) -> list[float]:
        """The pretraining fractions below 1 (each a backbone snapshot of the pretraining runs on the axis)."""
        return sorted(f for f in self.pretrain_fractions if f < 1)

    def task(self, benchmark: str, method: str | None = None) -> Any:
        """The settings of ``benchmark``; for ``method``, with its ``per_method`` overlays (``optim`` on
        ``train.optim``, then its overlay of this benchmark)."""
        base = getattr(self, benchmark)
        own = self.per_method.get(method) if method is not None else None
        if own is None:
            return base
        where = f"finetune.per_method.{method}"
        settings = merge(to_dict(base), {"train": {"optim": own.optim}} if own.optim else {})
        settings = merge(settings, own.benchmarks.get(benchmark) or {})
        return from_dict(type(base), settings, f"{where} ({benchmark})")

    def run_label_fractions(self, method: str, mode: str, benchmark: str) -> list[float]:
        """The label fractions a run of ``method`` in ``mode`` on ``benchmark`` trains on (1 always; the rest
        where ``label_fraction_modes``, ``label_fraction_methods`` and ``label_fraction_benchmarks`` allow)."""
        allowed = (
            (self.label_fraction_modes, mode),
            (self.label_fraction_methods, method),
            (self.label_fraction_benchmarks, benchmark),
        )
        if all(names is None or name in names for names, name in allowed):
            return list(self.label_fractions)
        return [f for f in self.label_fractions if f == 1]

    def method_variants(self, method: str) -> list[str]:
        """The variants a method runs with: ``variants`` for ``endofm`` (its ablations), ``default`` for the
        other pretrained methods, ``none`` for ``scratch``, ``external`` for a checkpoint file."""
        if method not in METHODS:
            return ["external"]
        if not METHODS[method].pretrained:
            return ["none"]
        return list(self.variants) if METHODS[method].has_variants else ["default"]


_NAME = re.compile(r"[A-Za-z0-9_]+")


@dataclass
class Ablation:
    """One ablation: named arms, each a pretraining overlay on ``pretrain.settings`` (pretrained as
    variant ``<ablation>-<arm>``) or the name of a variant in ``pretrain.variants`` (reused, not
    retrained), the pretrained ``methods`` that run each arm (:mod:`endofm.methods` says how a method
    takes an overlay), and the fine-tuning cells that compare them. Cells left null take the main
    matrix's: ``data.benchmarks``, ``finetune.protocols``, ``finetune.modes``, ``finetune.seeds``."""

    variants: dict[str, dict[str, Any] | str] = setting(
        description="The arms, {arm: overlay or variant}: an overlay on pretrain.settings (same keys, nested) is "
        "pretrained as variant <ablation>-<arm>; a string names a variant of pretrain.variants, reused, not retrained "
        "(e.g. both: default). The arm names are the table's rows",
        overlay=PretrainConfig,
        min_items=1,
    )
    methods: list[str] = setting(
        description="Pretrained methods that run every arm (endofm takes an arm whole; vcl its loop settings and "
        "init; st_adapter its image ViT's pretraining and an init as its start)",
        factory=lambda: ["endofm"],
        min_items=1,
    )
    benchmarks: list[str] | None = setting(
        None,
        "Benchmarks the arms are fine-tuned on (null: data.benchmarks)",
        min_items=1,
        each=dict(choices=BENCHMARKS),
    )
    protocols: list[str] | None = setting(
        None, "Protocols of the ablation's runs (null: finetune.protocols)", min_items=1, each=dict(choices=PROTOCOLS)
    )
    modes: list[str] | None = setting(
        None, "Modes of the ablation's runs (null: finetune.modes)", min_items=1, each=dict(choices=MODES)
    )
    seeds: list[int] | None = setting(
        None, "Seeds of the ablation's runs (null: finetune.seeds)", min_items=1, each=dict(minimum=0)
    )

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class EvaluateStage:
    """Robustness read-out (`snakemake robustness`): the finished runs of the matrix (full label and
    pretraining fractions) scored again on corrupted test inputs (:mod:`endofm.data.corruptions`)."""

    corruptions: dict[str, list[int]] = setting(
        description=f"Corruptions and their severities (1-3), e.g. {{motion_blur: [1, 2, 3]}}; names: "
        f"{', '.join(CORRUPTIONS)}. Empty: no robustness read-out",
        factory=dict,
    )
    modes: list[str] = setting(
        description="Modes of the runs scored under the corruptions",
        factory=lambda: list(MODES),
        min_items=1,
        each=dict(choices=MODES),
    )
    benchmarks: list[str] | None = setting(
        None,
        "Benchmarks whose runs are scored (null: every benchmark of data.benchmarks)",
        each=dict(choices=BENCHMARKS),
    )

    def __post_init__(self) -> None:
        check_fields(self, "evaluate")
        for name, severities in self.corruptions.items():
            where = f"evaluate.corruptions.{name}"
            if name not in CORRUPTIONS:
                raise ConfigError(f"{where}: unknown corruption; known: {', '.join(CORRUPTIONS)}", key=where)
            if not isinstance(severities, list) or not severities:
                raise ConfigError(
                    f"{where}: expected a non-empty list of severities from {list(SEVERITIES)}", key=where
                )
            bad = [v for v in severities if isinstance(v, bool) or v not in SEVERITIES]
            if bad or len(set(severities)) < len(severities):
                raise ConfigError(
                    f"{where}: expected distinct severities from {list(SEVERITIES)}, got {severities}", key=where
                )

    def cells(self) -> list[tuple[str, int]]:
        """The (corruption, severity) cells, in config order: one metrics file each per scored run."""
        return [(name, int(s)) for name, severities in self.corruptions.items() for s in severities]


@dataclass
class WorkflowConfig:
    """The workflow's configuration (``config/*.yaml``): keys left out take these defaults, and an unknown key
    is an error at every level."""

    data: DataConfig = setting(
        description="Where the data stage reads and writes, and which sources and benchmarks it uses",
        factory=DataConfig,
    )
    synthetic: SynthConfig = setting(
        description="Sizes and difficulty of the built-in synthetic corpus (origin: synthetic)", factory=SynthConfig
    )
    clips: ClipConfig = setting(
        description="How pretraining sources are cut into clips (the official protocol: 150 frames at 30 fps, short "
        "side 256)",
        factory=ClipConfig,
    )
    pretrain: PretrainStage = setting(description="Self-supervised pretraining", factory=PretrainStage)
    finetune: FinetuneStage = setting(
        description="Fine-tuning and evaluation: the experiment matrix and each benchmark's settings",
        factory=FinetuneStage,
    )
    ablations: dict[str, Ablation] = setting(
        description="Named ablations, each the target ablation_<name> (ablations: all of them) and a table of the "
        "report; not part of all",
        factory=dict,
    )
    report: ReportConfig = setting(description="How the report compares methods", factory=ReportConfig)
    evaluate: EvaluateStage = setting(
        description="Robustness read-out: finished runs scored on corrupted test inputs", factory=EvaluateStage
    )

    def draws(self) -> list[int]:
        """The benchmark draws of this workflow: ``synthetic.draws`` on the built-in corpus, the one data set (0)
        on real data."""
        return list(self.synthetic.draws) if self.data.origin == "synthetic" else [0]

    def __post_init__(self) -> None:
        unknown = [v for v in self.finetune.variants if v not in self.pretrain.variants]
        if "endofm" in self.finetune.methods and not self.finetune.variants:
            raise ConfigError("finetune.variants: method endofm needs at least one pretraining variant")
        if unknown and "endofm" in self.finetune.methods:
            raise ConfigError(
                f"finetune.variants: {unknown} are not pretraining variants ({', '.join(self.pretrain.variants)})"
            )
        if self.data.origin == "real" and self.synthetic.draws != [0]:
            raise ConfigError(
                f"synthetic.draws: {self.synthetic.draws} needs data.origin synthetic (real data has one draw: [0])"
            )
        self._check_ablations()
        for name in self.finetune.pretrain_fraction_methods if self.finetune.snapshot_fractions() else []:
            if self.external_weights(name) is not None:
                raise ConfigError(
                    f"finetune.pretrain_fraction_methods: {name!r} takes its weights from a file "
                    f"(pretrain.{get_method(name).config_section}.init), not from a pretraining run with snapshots"
                )
        for name, method in METHODS.items():
            if method.pretrained and not method.has_variants:
                self.method_settings(name, "default")  # fail at start, naming the section
        for method in self.finetune.methods:
            decoder = self.finetune.task("cvc12k", method).decoder
            if "cvc12k" in self.data.benchmarks and decoder not in task_backbone(method).segmentation_decoders:
                where = (
                    f"finetune.per_method.{method}.benchmarks.cvc12k.decoder"
                    if "decoder" in self._own("cvc12k", method)
                    else "finetune.cvc12k.decoder"
                )
                raise ConfigError(
                    f"{where}: {method} cannot run the {decoder} decoder "
                    f"(it can: {', '.join(task_backbone(method).segmentation_decoders)}; "
                    f"finetune.per_method.{method}.benchmarks.cvc12k.decoder sets it for {method} alone)",
                    key="finetune.cvc12k.decoder",
                )
        self._check_normalization()
        missing = [n for n in self.report.ablations if n not in self.ablations]
        if missing:
            raise ConfigError(f"report.ablations: {missing} are not named in ablations ({', '.join(self.ablations)})")

    def _own(self, benchmark: str, method: str) -> dict[str, Any]:
        own = self.finetune.per_method.get(method)
        return dict(own.benchmarks.get(benchmark) or {}) if own else {}

    def _check_normalization(self) -> None:
        """ST-Adapter with ``normalization: clip`` turns ImageNet-normalised RGB into CLIP's: every benchmark
        must feed it that (its ``per_method`` overlays)."""
        if self.pretrain.st_adapter.normalization != "clip" or "st_adapter" not in self.finetune.methods:
            return
        for bench in self.data.benchmarks:
            task = self.finetune.task(bench, "st_adapter")
            if not imagenet_input(task):
                raise ConfigError(
                    f"pretrain.st_adapter.normalization is clip, so ST-Adapter's {bench} runs must feed ImageNet-"
                    f"normalised RGB: set finetune.per_method.st_adapter.benchmarks.{bench} (normalization: imagenet "
                    "and channels: rgb, or mean/std: ImageNet's)",
                    key="pretrain.st_adapter.normalization",
                )

    def _check_ablations(self) -> None:
        for name, ablation in self.ablations.items():
            where = f"ablations.{name}"
            if not _NAME.fullmatch(name):
                raise ConfigError(f"{where}: an ablation name takes letters, digits and _ only")
            for method in ablation.methods:
                if method not in METHODS or not METHODS[method].pretrained:
                    known = ", ".join(n for n, m in METHODS.items() if m.pretrained)
                    raise ConfigError(
                        f"{where}.methods: {method!r} is not a pretrained method; expected one of {known}"
                    )
            for arm, overlay in ablation.variants.items():
                if not _NAME.fullmatch(arm):
                    raise ConfigError(f"{where}.variants.{arm}: an arm name takes letters, digits and _ only")
                if isinstance(overlay, str) and overlay not in self.pretrain.variants:
                    raise ConfigError(
                        f"{where}.variants.{arm}: {overlay!r} is not in pretrain.variants "
                        f"({', '.join(self.pretrain.variants)})"
                    )
                if not isinstance(overlay, str):
                    variant = f"{name}-{arm}"
                    if variant in self.pretrain.variants:
                        raise ConfigError(f"{where}.variants.{arm}: variant name {variant!r} is in pretrain.variants")
                    self.pretrain.resolve(overlay, f"{where}.variants.{arm}")
            reused = [v for v in ablation.variants.values() if isinstance(v, str)]
            if len(set(reused)) < len(reused):
                raise ConfigError(f"{where}.variants: two arms reuse the same pretraining variant")
            for method in ablation.methods:
                for variant in self.ablation_variants(name):
                    try:
                        self.method_settings(method, variant)
                    except ConfigError as exc:
                        raise ConfigError(f"{where}.methods: {method}: {exc}") from None
            cells = (
                ("benchmarks", self.data.benchmarks),
                ("protocols", self.finetune.protocols),
                ("modes", self.finetune.modes),
            )
            for key, allowed in cells:
                values = getattr(ablation, key)
                bad = [v for v in values or [] if v not in allowed]
                if bad:
                    raise ConfigError(f"{where}.{key}: {bad}; allowed: {', '.join(allowed)}")

    def ablation_variants(self, name: str) -> dict[str, str]:
        """Ablation ``name`` as ``{pretraining variant: arm}``, in config order (a table's rows)."""
        if name not in self.ablations:
            raise ConfigError(f"ablations: no ablation {name!r}; known: {', '.join(self.ablations) or 'none'}")
        arms = self.ablations[name].variants
        return {(v if isinstance(v, str) else f"{name}-{arm}"): arm for arm, v in arms.items()}

    def pretrain_overlays(self) -> dict[str, dict[str, Any] | None]:
        """Every pretraining variant: ``pretrain.variants`` and the ablations' own arms."""
        out = dict(self.pretrain.variants)
        for name, ablation in self.ablations.items():
            out.update({f"{name}-{arm}": v for arm, v in ablation.variants.items() if not isinstance(v, str)})
        return out

    def method_settings(self, method: str, variant: str) -> Any:
        """The resolved pretraining settings of ``variant`` of a pretrained ``method`` (its objective's config
        class), by the method's resolver in :data:`endofm.methods.METHODS`."""
        try:
            settings = get_method(method).settings(self, variant)
        except ValueError as exc:
            raise ConfigError(str(exc) if isinstance(exc, ConfigError) else f"pretrain: {method}: {exc}") from exc
        derived = self.pretrain_snapshots(method, variant)
        if derived:
            settings = dataclasses.replace(settings, snapshots=sorted({*settings.snapshots, *derived}))
        return settings

    def pretrain_priority(self, method: str, variant: str) -> float:
        """The Snakemake priority of ``method``'s ``variant`` pretraining: above the data stage's 10, and higher the
        longer the job (its epochs times the method's :attr:`~endofm.methods.Method.step_cost`), so that on a
        few cores the longest pretraining starts first instead of ending last."""
        epochs = self.method_settings(method, variant).epochs
        return 10 + get_method(method).step_cost * epochs

    def method_start(self, method: str, variant: str = "default") -> str:
        """The weights ``method``'s ``variant`` starts from (``random`` or a file): its ``init``
        (:meth:`endofm.methods.Method.start`); ``random`` for scratch."""
        try:
            return get_method(method).start(self, variant)
        except ValueError as exc:
            raise ConfigError(str(exc) if isinstance(exc, ConfigError) else f"pretrain: {method}: {exc}") from exc

    def external_weights(self, method: str, variant: str = "default") -> str | None:
        """The weights file that replaces ``variant``'s pretraining of ``method`` (ST-Adapter from a file), or None."""
        return get_method(method).external_weights(self, variant)

    def pretrain_snapshots(self, method: str, variant: str) -> list[float]:
        """The snapshots the pretraining axis asks of pretraining job (``method``, ``variant``): every
        fraction below 1 of ``finetune.pretrain_fractions`` when the method is in
        ``pretrain_fraction_methods`` and the variant is one those methods fine-tune, else none."""
        ft = self.finetune
        variants = {v for m in ft.pretrain_fraction_methods for v in ft.method_variants(m)}
        return ft.snapshot_fractions() if method in ft.pretrain_fraction_methods and variant in variants else []

    def pretrain_variant(self, name: str) -> PretrainConfig:
        """The settings of pretraining variant ``name`` (of ``pretrain.variants`` or an ablation arm)."""
        if name in self.pretrain.variants:
            return self.pretrain.variant(name)
        overlays = self.pretrain_overlays()
        if name not in overlays:
            raise ConfigError(
                f"pretrain.variants: no variant {name!r}; known (ablation arms included): {', '.join(overlays)}"
            )
        return self.pretrain.resolve(overlays[name], f"ablations: variant {name}")


def finetune_runs(cfg: WorkflowConfig) -> list[RunSpec]:
    """Every run of the matrix: benchmark × method (× its variants) × protocol × mode × seed × label
    fraction (of that mode), and the pretraining axis: its benchmarks × methods × protocols × modes × seeds ×
    pretraining fraction (``finetune.pretrain_fractions``); each on every benchmark draw (``synthetic.draws``)
    when its mode is in ``finetune.draw_modes``, else on draw 0."""
    ft = cfg.finetune

    def cells(benchmarks, methods, modes):
        for bench in benchmarks:
            for method in methods:
                for variant in ft.method_variants(method):
                    for protocol in ft.protocols:
                        for mode in modes:
                            for seed in ft.seeds:
                                yield bench, method, variant, protocol, mode, seed

    runs = [
        RunSpec(bench, method, variant, protocol, mode, seed, fraction)
        for bench, method, variant, protocol, mode, seed in cells(cfg.data.benchmarks, ft.methods, ft.modes)
        for fraction in ft.run_label_fractions(method, mode, bench)
    ]
    curve = []
    if ft.snapshot_fractions():  # only fraction 1: the matrix alone
        on_axis = [b for b in ft.pretrain_fraction_benchmarks if b in cfg.data.benchmarks]
        curve = [
            RunSpec(*cell, pretrain_fraction=fraction)
            for cell in cells(on_axis, ft.pretrain_fraction_methods, ft.pretrain_fraction_modes)
            for fraction in ft.pretrain_fractions
        ]
    drawn = [
        dataclasses.replace(run, draw=draw)
        for run in dict.fromkeys(runs + curve)  # the axis' fraction-1 runs are the matrix's own
        for draw in (cfg.draws() if run.mode in ft.draw_modes else [0])
    ]
    return drawn


def robustness_runs(cfg: WorkflowConfig) -> list[RunSpec]:
    """The runs the robustness read-out scores: the matrix's runs at the full label and pretraining fractions
    on the main benchmark draw in ``evaluate.modes`` on ``evaluate.benchmarks``; none without ``evaluate.corruptions``."""
    ev = cfg.evaluate
    if not ev.corruptions:
        return []
    return [
        r
        for r in finetune_runs(cfg)
        if r.label_fraction == 1 and r.pretrain_fraction == 1 and r.draw == 0 and r.mode in ev.modes
        if ev.benchmarks is None or r.benchmark in ev.benchmarks
    ]


def robustness_files(cfg: WorkflowConfig, benchmark: str | None = None) -> list[str]:
    """The robustness metrics file of every scored run (:func:`robustness_runs`; of ``benchmark`` only) and cell."""
    return [
        paths.robustness_file(run.path, name, severity)
        for run in robustness_runs(cfg)
        if benchmark in (None, run.benchmark)
        for name, severity in cfg.evaluate.cells()
    ]


def ablation_runs(cfg: WorkflowConfig, name: str) -> list[RunSpec]:
    """The fine-tuning runs of ablation ``name``: each of its methods on each of its variants × its cells."""
    variants = cfg.ablation_variants(name)
    ablation = cfg.ablations[name]
    return [
        RunSpec(bench, method, variant, protocol, mode, seed)
        for bench in ablation.benchmarks or cfg.data.benchmarks
        for method in ablation.methods
        for variant in variants
        for protocol in ablation.protocols or cfg.finetune.protocols
        for mode in ablation.modes or cfg.finetune.modes
        for seed in ablation.seeds or cfg.finetune.seeds
    ]


def pretrain_runs(cfg: WorkflowConfig) -> list[tuple[str, str]]:
    """Every pretraining job, ``(method, variant)``: each Endo-FM variant, and the one run of every other
    pretrained method in ``finetune.methods`` that is not given a weights file instead."""
    return [
        (name, variant)
        for name, method in METHODS.items()
        if method.pretrained and (method.has_variants or name in cfg.finetune.methods)
        if cfg.external_weights(name) is None
        for variant in cfg.pretrain.method_variants(name)
    ]


def run_backbone(
    cfg: WorkflowConfig, method: str, variant: str, pretrain_fraction: float = 1.0
) -> tuple[BackboneConfig, str | None]:
    """The backbone settings a fine-tuning run builds, and the checkpoint it loads (None: random init).

    A pretrained method loads its pretraining's ``backbone.pt`` (or the weights file its section names),
    or with ``pretrain_fraction`` below 1 that pretraining's snapshot (:func:`snapshot_path`); ``scratch``
    uses the default pretraining variant's architecture, so it compares like for like.
    """
    if pretrain_fraction != 1 and pretrain_fraction not in cfg.pretrain_snapshots(method, variant):
        raise ConfigError(
            f"finetune.pretrain_fractions: {method}/{variant} has no pretraining snapshot at {pretrain_fraction:g}"
        )
    if method in METHODS:
        if not METHODS[method].pretrained:
            reference = "default" if "default" in cfg.pretrain.variants else next(iter(cfg.pretrain.variants))
            return cfg.pretrain.variant(reference).backbone, None
        checkpoint = cfg.external_weights(method, variant)
        if checkpoint:  # its architecture is the file's (a CLIP file selects CLIP's when the run loads it)
            return BackboneConfig(name="vit_base_patch16_clip"), checkpoint
        settings = cfg.method_settings(method, variant)
        return settings.backbone, snapshot_path(paths.pretrain_dir(method, variant), pretrain_fraction).as_posix()
    if method in cfg.finetune.checkpoints:
        external = cfg.finetune.checkpoints[method]
        return external.backbone, external.path
    raise ConfigError(f"unknown fine-tuning method {method!r}")


def imagenet_input(task: Any) -> bool:
    """Whether a benchmark's settings feed the backbone ImageNet-normalised RGB: ``normalization: imagenet``
    (with ``channels: rgb`` where it has channels), or ImageNet's ``mean``/``std``."""
    if hasattr(task, "normalization"):
        return task.normalization == "imagenet" and getattr(task, "channels", "rgb") == "rgb"
    close = lambda a, b: len(a) == len(b) and all(abs(x - y) < 1e-9 for x, y in zip(a, b, strict=True))  # noqa: E731
    return close(getattr(task, "mean", ()), IMAGENET_MEAN) and close(getattr(task, "std", ()), IMAGENET_STD)


def load_workflow_config(config: dict[str, Any] | str | Path) -> WorkflowConfig:
    """Build the typed config from a YAML file or an already-loaded mapping (Snakemake's ``config``);
    errors from a file name it."""
    if not isinstance(config, (str, Path)):
        return from_dict(WorkflowConfig, config, "config")
    data = load_yaml(config)
    try:
        return from_dict(WorkflowConfig, data, "config")
    except ConfigError as exc:
        raise ConfigError(config_error_line(exc, [config]), key=exc.key) from None


def load_pretrain_settings(
    path: str | Path | None, variant: str | None = None, method: str | None = None
) -> tuple[str, Any]:
    """``(method, settings)`` of one pretraining run: ``method`` (default ``endofm``) and variant ``variant``
    (default ``default``) of a workflow config, or the resolved file the workflow writes for its job
    (``method:`` and ``pretrain:``; it takes neither option). ``None``: the defaults of :class:`WorkflowConfig`."""
    if path is None:
        return method or "endofm", WorkflowConfig().method_settings(method or "endofm", variant or "default")
    data = load_yaml(path)
    section = data.get("pretrain")
    stage_keys = set(PretrainStage.__dataclass_fields__)
    if set(data) <= {"method", "pretrain"} and isinstance(section, dict) and not set(section) & stage_keys:
        for flag, value in (("--variant", variant), ("--method", method)):
            if value is not None:
                raise ConfigError(f"{path}: holds one run's resolved settings; drop {flag} {value}")
        return pretrain_method(path, data), load_pretrain_config(path)
    cfg = load_workflow_config(path)
    try:
        return method or "endofm", cfg.method_settings(method or "endofm", variant or "default")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def run_backbone_options(cfg: WorkflowConfig, method: str) -> dict[str, Any]:
    """What else a run of ``method`` needs to build its backbone (e.g. ST-Adapter's adapters); {} for a video ViT."""
    return task_backbone(method).options(cfg.pretrain)

"""VCL's negatives over the global batch (endofm/pretraining/vcl.py, engine.all_gather_cat) on two CPU
processes (gloo): the losses of two processes holding half a batch each equal those of one process holding
the whole batch, directly (torch.multiprocessing) and through ``endofm pretrain --method vcl`` under the
launcher (python -m endofm.launch, torchrun's options)."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
import yaml

from endofm.config import from_dict
from endofm.engine import all_gather_cat
from endofm.pretraining.vcl import VCLConfig, VCLLoss, info_nce

REPO = Path(__file__).resolve().parents[1]
B, K, D, P = 6, 5, 8, 4  # the whole batch; each of 2 processes holds B / 2 rows
LOSS_CFG = {"num_concepts": K, "proj_dim": P, "queue_length": 8, "local_topk": 2, "local_concepts": False}
TERMS = ["loss", "nce_vv", "nce_vs", "nce_vd", "concept", "diversity", "fidelity"]
#: The processes spawned by :func:`two_ranks` import this module: its top level stays light.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def batch() -> dict[str, torch.Tensor]:
    """A whole batch of VCLModel-shaped outputs (batch along dim 2 of ``z``, dim 1 of the others)."""
    g = torch.Generator().manual_seed(0)
    return {
        "feature": torch.randn(6, B, D, generator=g),
        "z": F.normalize(torch.randn(5, 2, B, P, generator=g), dim=-1),
        "scores": torch.rand(6, B, 2 * K, generator=g) * 2 - 1,
        "reconstruction": torch.randn(6, B, D, generator=g),
    }


def shard(out: dict[str, torch.Tensor], rows: slice) -> dict[str, torch.Tensor]:
    return {k: (v[:, :, rows] if k == "z" else v[:, rows]).clone() for k, v in out.items()}


def one_process(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What one process holding the whole batch computes: InfoNCE and its query gradient, VCL's terms, the queue."""
    q = out["z"][0, 0].clone().requires_grad_(True)
    nce = info_nce(q, out["z"][0, 1], 0.07)
    nce.backward()
    criterion = VCLLoss(from_dict(VCLConfig, LOSS_CFG, "test"))
    terms = criterion(out, epoch=0, local=False)
    return {"nce": nce.detach(), "grad": q.grad, **{k: terms[k].detach() for k in TERMS}, "queue": criterion.queue}


def _rank(rank: int, world: int, port: int, folder: str) -> None:
    """One of two gloo processes: rows ``rank·B/2 ...`` of :func:`batch`; saves what it computed."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        whole = batch()
        half = shard(whole, slice(rank * B // world, (rank + 1) * B // world))
        keys = all_gather_cat(half["z"][0, 1])
        result = one_process(half)
        torch.save({**result, "keys": keys}, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict[str, torch.Tensor]]:
    """What each of two spawned gloo processes computed on its half of :func:`batch`."""
    folder = tmp_path_factory.mktemp("ranks")
    mp.spawn(_rank, args=(2, free_port(), str(folder)), nprocs=2, join=True)
    return [torch.load(folder / f"rank{r}.pt") for r in range(2)]


def test_two_processes_see_the_negatives_of_the_whole_batch(two_ranks):
    ranks, whole = two_ranks, batch()
    want = one_process(whole)
    # The gathered keys are the whole batch's, in rank order, on both processes.
    for r in ranks:
        assert torch.equal(r["keys"], whole["z"][0, 1])
    # The mean of the processes' InfoNCE (what DDP averages) is the one-process InfoNCE over all 5 negatives,
    # and each process's query gradient, halved by DDP's average, is its rows of the one-process gradient.
    torch.testing.assert_close((ranks[0]["nce"] + ranks[1]["nce"]) / 2, want["nce"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.cat([r["grad"] / 2 for r in ranks]), want["grad"], rtol=1e-5, atol=1e-7)
    # So are VCL's InfoNCE, diversity and fidelity terms (batch means), and both processes' queues hold the
    # whole batch's scores.
    for name in ("nce_vv", "nce_vs", "nce_vd", "diversity", "fidelity"):
        got = (ranks[0][name] + ranks[1][name]) / 2
        torch.testing.assert_close(got, want[name], rtol=1e-5, atol=1e-6, msg=name)
    for r in ranks:
        torch.testing.assert_close(r["queue"], want["queue"], rtol=0, atol=0)
    # Each process alone with its half of the batch (fewer negatives) would give another InfoNCE.
    halves = [shard(whole, rows)["z"][0] for rows in (slice(0, 3), slice(3, 6))]
    alone = sum(info_nce(z[0], z[1], 0.07).item() for z in halves) / 2
    assert abs(alone - want["nce"].item()) > 1e-3


def test_two_processes_concept_targets_equal_one_process(two_ranks):
    """The swapped concept prediction (Sinkhorn-Knopp over the whole batch) and so the total loss: the ranks used
    to shift their scores by their own maximum before the cross-rank sums (objective.sinkhorn_knopp)."""
    want = one_process(batch())
    for name in ("concept", "loss"):
        got = (two_ranks[0][name] + two_ranks[1][name]) / 2
        torch.testing.assert_close(got, want[name], rtol=1e-5, atol=1e-6, msg=name)


def tiny_paper_config(folder: Path) -> Path:
    """config/paper.yaml with its VCL settings (the original's), at tiny sizes: a micro backbone, 2-frame
    16 px clips, K 12 with the original's top-10 local concepts from the first step, one step of 2 clips."""
    cfg = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    loop = {
        "backbone": {"name": "vit_micro_patch8"},
        "init": "random",
        "epochs": 1,
        "warmup_epochs": 0,
        "batch_size_per_gpu": 2,
        "max_steps_per_epoch": 1,
        "num_workers": 0,
        "checkpoint_every": 0,
        "device": "cpu",
    }
    cfg["pretrain"]["settings"] = {**cfg["pretrain"]["settings"], **loop}
    vcl = {"views": {"frames": 2, "size": 16}, "num_concepts": 12, "proj_dim": 8, "queue_length": 8}
    vcl |= {"local_start_epoch": 0} | ({"init": "random"} if "init" in VCLConfig.__dataclass_fields__ else {})
    cfg["pretrain"]["vcl"] = {**(cfg["pretrain"].get("vcl") or {}), **vcl}
    path = folder / "paper_tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.timeout(240)
def test_cli_pretrains_vcl_on_two_cpu_processes_with_gathered_negatives(tmp_path):
    """``python -m endofm.launch --standalone --nproc-per-node=2 -m endofm.cli pretrain --method vcl``: one step
    of 2 gloo processes × 2 clips. Its InfoNCE terms (no batch statistics upstream of them) equal those of
    one process × 4 clips of the same settings: each query met the 3 other clips of the global batch."""
    from test_pretrain import make_clips  # here, not at the top: the spawned processes import this module

    from endofm.pretraining.train import pretrain
    from endofm.settings import load_pretrain_settings

    clips = make_clips(tmp_path / "clips", 6)
    config = tiny_paper_config(tmp_path)
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "endofm.launch", "--standalone", "--nproc-per-node=2",
        "-m", "endofm.cli", "pretrain", "--config", str(config), "--method", "vcl",
        "--clips", str(clips), "--out", str(out), "--workers", "0",
    ]  # fmt: skip
    result = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=200)
    assert result.returncode == 0, result.stderr[-4000:]
    run = yaml.safe_load((out / "config.yaml").read_text())["run"]
    assert (run["world_size"], run["global_batch"]) == (2, 4)
    got = pd.read_csv(out / "metrics.csv")
    assert got["steps"].tolist() == [1] and got["local"][0] > 0  # local concepts ran too

    method, settings = load_pretrain_settings(config, None, "vcl")
    assert method == "vcl" and settings.temperature == 0.07 and settings.views.color_jitter == 1.0
    pretrain(dataclasses.replace(settings, batch_size_per_gpu=4), [clips], tmp_path / "one", workers=0)
    want = pd.read_csv(tmp_path / "one" / "metrics.csv")
    nce = ["nce_vv", "nce_vs", "nce_vd"]
    np.testing.assert_allclose(got[nce].to_numpy(), want[nce].to_numpy(), rtol=1e-5)

"""DINO head, multi-view forward, Endo-FM loss and the training-loop helpers (docs/original.md §2.3, §3.5-3.6)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from endofm.models.checkpoint import legacy_to_parametrized, load_backbone, parametrized_to_legacy
from endofm.models.heads import DINOHead
from endofm.models.vit import build_backbone
from endofm.pretraining.objective import (
    EndoFMLoss,
    MultiViewModel,
    cancel_last_layer_gradients,
    clip_gradients,
    ema_update,
    group_views,
    param_groups,
    teacher_temperature_schedule,
)

MAGNITUDE = "last_layer.parametrizations.weight.original0"  # legacy name: last_layer.weight_g
DIRECTION = "last_layer.parametrizations.weight.original1"  # legacy name: last_layer.weight_v


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_head(seed: int = 0, **kwargs) -> DINOHead:
    torch.manual_seed(seed)
    return DINOHead(kwargs.pop("in_dim", 32), **{"out_dim": 16, "hidden_dim": 24, "bottleneck_dim": 8, **kwargs})


def micro_model(seed: int = 0, out_dim: int = 16) -> MultiViewModel:
    torch.manual_seed(seed)
    backbone = build_backbone("vit_micro_patch8")
    with torch.no_grad():  # every parameter random, so the temporal branches and time_embed are active
        for p in backbone.parameters():
            p.normal_(0.0, 0.1)
    return MultiViewModel(backbone, small_head(seed, out_dim=out_dim)).eval()


def paper_views(batch: int = 2, seed: int = 0) -> list[torch.Tensor]:
    """The paper's 10 view shapes (frames 8, 16 | 2, 2, 4, 4, 8, 8, 16, 16) at micro spatial sizes."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(8, 32), (16, 32)] + [(t, 16) for t in (2, 2, 4, 4, 8, 8, 16, 16)]
    return [torch.randn(batch, 3, t, s, s, generator=g) for t, s in shapes]


# --------------------------------------------------------------------------------------------- DINO head


def test_dino_head_vit_b_sizes_and_names():
    with torch.device("meta"):
        head = DINOHead(768)
    assert sum(p.numel() for p in head.parameters()) == 23_138_560
    assert sum(p.numel() for p in head.parameters() if p.requires_grad) == 23_138_560 - 65536
    shapes = {k: list(v.shape) for k, v in head.state_dict().items()}
    assert shapes == {  # docs/original.md §2.2, with the parametrization names for weight_g/weight_v
        "mlp.0.weight": [2048, 768],
        "mlp.0.bias": [2048],
        "mlp.2.weight": [2048, 2048],
        "mlp.2.bias": [2048],
        "mlp.4.weight": [256, 2048],
        "mlp.4.bias": [256],
        "last_layer.parametrizations.weight.original0": [65536, 1],
        "last_layer.parametrizations.weight.original1": [65536, 256],
    }
    assert [type(m) for m in head.mlp] == [nn.Linear, nn.GELU, nn.Linear, nn.GELU, nn.Linear]


def test_dino_head_init_and_forward():
    torch.manual_seed(0)
    head = DINOHead(64, out_dim=12, hidden_dim=512, bottleneck_dim=16)
    magnitude = head.last_layer.parametrizations.weight.original0
    assert not magnitude.requires_grad and torch.equal(magnitude, torch.ones(12, 1))
    assert torch.allclose(head.last_layer.weight.norm(dim=1), torch.ones(12), atol=1e-6)
    for i in (0, 2, 4):
        assert torch.equal(head.mlp[i].bias, torch.zeros_like(head.mlp[i].bias))
    w = head.mlp[2].weight  # 512 x 512 values from trunc_normal(0.02)
    assert abs(w.std().item() - 0.02) < 0.001
    x = torch.randn(5, 64)
    out = head(x)
    assert out.shape == (5, 12)
    # Unit-norm bottleneck and unit-norm rows: the logits are cosines.
    assert out.abs().max() <= 1.0 + 1e-5
    z = F.normalize(head.mlp(x), dim=-1)
    assert torch.allclose(out, z @ F.normalize(head.last_layer.parametrizations.weight.original1, dim=1).T, atol=1e-6)

    free = DINOHead(8, out_dim=4, hidden_dim=6, bottleneck_dim=3, norm_last_layer=False)
    assert free.last_layer.parametrizations.weight.original0.requires_grad
    assert torch.equal(free.last_layer.parametrizations.weight.original0, torch.ones(4, 1))
    one = DINOHead(8, out_dim=4, bottleneck_dim=3, nlayers=1)
    assert set(one.state_dict()) == {"mlp.weight", "mlp.bias", MAGNITUDE, DIRECTION}
    with pytest.raises(ValueError, match="nlayers must be >= 1, got 0"):
        DINOHead(8, nlayers=0)


def test_dino_head_legacy_names_round_trip():
    head = small_head(0)
    state = {"head." + k: v for k, v in head.state_dict().items()}
    legacy = parametrized_to_legacy(state)
    assert sorted(k for k in legacy if "last_layer" in k) == ["head.last_layer.weight_g", "head.last_layer.weight_v"]
    back = {k.removeprefix("head."): v for k, v in legacy_to_parametrized(legacy).items()}
    other = small_head(1)
    other.load_state_dict(back, strict=True)
    x = torch.randn(4, 32)
    assert torch.equal(other(x), head(x))


def test_dino_head_matches_a_legacy_weight_norm_head():
    """The official head (legacy ``torch.nn.utils.weight_norm``) loads strictly and computes the same."""
    torch.manual_seed(3)
    mlp = nn.Sequential(nn.Linear(32, 24), nn.GELU(), nn.Linear(24, 24), nn.GELU(), nn.Linear(24, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the legacy API is deprecated
        last = torch.nn.utils.weight_norm(nn.Linear(8, 16, bias=False))
    with torch.no_grad():
        last.weight_g.uniform_(0.5, 2.0)  # a non-unit magnitude, as with norm_last_layer=False
    legacy = {f"mlp.{k}": v for k, v in mlp.state_dict().items()}
    legacy.update({f"last_layer.{k}": v for k, v in last.state_dict().items()})
    assert legacy["last_layer.weight_g"].shape == (16, 1)
    head = small_head(0, norm_last_layer=False)
    head.load_state_dict(legacy_to_parametrized(legacy), strict=True)
    x = torch.randn(6, 32)
    assert torch.allclose(head(x), last(F.normalize(mlp(x), dim=-1)), atol=1e-6)


# ----------------------------------------------------------------------------------------- multi-view model


def test_group_views_paper_grouping():
    assert group_views(paper_views(batch=1)) == [(0, 1), (1, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    a, b = torch.zeros(1, 3, 2, 16, 16), torch.zeros(1, 3, 4, 16, 16)
    assert group_views([a, b, a]) == [(0, 1), (1, 2), (2, 3)]  # equal shapes that are not adjacent stay apart
    assert group_views([a, a.clone(), a]) == [(0, 3)]
    assert group_views([]) == []


def test_multiview_model_batches_groups_and_matches_one_by_one():
    model = micro_model()
    calls = []
    model.backbone.register_forward_hook(lambda m, args, out: calls.append(tuple(args[0].shape)))
    views = paper_views(batch=2)
    with torch.no_grad():
        out = model(views)
        assert len(calls) == 6
        assert [c[0] for c in calls] == [2, 2, 4, 4, 4, 4]  # B, B, then two views per local group
        calls.clear()
        single = torch.cat([model.head(model.backbone(v)) for v in views])
        teacher_out = model(views[:2])
    assert out.shape == (10 * 2, 16)
    torch.testing.assert_close(out, single, atol=1e-5, rtol=1e-5)
    assert len(calls) == 10 + 2  # one by one, then the teacher's two globals
    torch.testing.assert_close(teacher_out, out[:4], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert torch.equal(model(views[0]), model([views[0]]))


def test_multiview_model_rejects_bad_views():
    model = micro_model()
    with pytest.raises(ValueError, match="at least one view"):
        model([])
    with pytest.raises(ValueError, match="view 1 has 3"):
        model([torch.zeros(2, 3, 2, 16, 16), torch.zeros(3, 3, 2, 16, 16)])
    with pytest.raises(ValueError, match=r"view 0 must be a \(B, 3, T, H, W\) tensor, got \(2, 3, 16, 16\)"):
        model([torch.zeros(2, 3, 16, 16)])


def test_multiview_model_checkpoint_keys():
    model = micro_model()
    state = model.state_dict()
    assert {k.split(".")[0] for k in state} == {"backbone", "head"}
    assert f"head.{MAGNITUDE}" in state
    assert "head.last_layer.weight_g" in parametrized_to_legacy(state)
    fresh = build_backbone("vit_micro_patch8")
    report = load_backbone(fresh, {"teacher": state})
    assert len(report.head_keys) == 8
    assert all(torch.equal(v, state["backbone." + k]) for k, v in fresh.state_dict().items())


# ---------------------------------------------------------------------------------------------------- loss


def hand_loss(s, t, c, n_global, n_views, tau_s, tau_t):
    """Explicit loops over (teacher view, student view, sample), float64: the per-pair term table."""
    s, t, c = (np.asarray(a, dtype=np.float64) for a in (s, t, c))
    b = t.shape[0] // n_global
    terms = {}
    for q in range(n_global):
        for v in range(n_views):
            if v == q:
                continue
            total = 0.0
            for i in range(b):
                tz = (t[q * b + i] - c[0]) / tau_t
                p = np.exp(tz - tz.max()) / np.exp(tz - tz.max()).sum()
                sz = s[v * b + i] / tau_s
                log_q = sz - (sz.max() + np.log(np.exp(sz - sz.max()).sum()))
                total += -(p * log_q).sum()
            terms[q, v] = total / b
    return terms


def random_outputs(n_global=2, n_views=4, batch=3, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_views * batch, k, generator=g), torch.randn(n_global * batch, k, generator=g)


def test_loss_matches_hand_computation():
    s, t = random_outputs()
    loss_fn = EndoFMLoss(5, n_global=2, n_views=4, epochs=3)
    loss_fn.center.copy_(torch.tensor([[0.3, -0.2, 0.1, 0.0, 0.5]]))
    center = loss_fn.center.clone()
    out = loss_fn(s, t, epoch=1)
    terms = hand_loss(s, t, center, 2, 4, 0.1, 0.04)
    assert len(terms) == 6  # 2 teacher views x 3 other student views
    dm = [terms[0, 1], terms[1, 0]]
    cv = [v for (_, s_view), v in terms.items() if s_view >= 2]
    assert out["loss"].item() == pytest.approx(np.mean(list(terms.values())), rel=1e-5)
    assert out["dm"].item() == pytest.approx(np.mean(dm), rel=1e-5)
    assert out["cv"].item() == pytest.approx(np.mean(cv), rel=1e-5)
    assert out["teacher_temp"] == 0.04 and out["loss"].dtype == torch.float32


def test_loss_terms_and_weights():
    paper = EndoFMLoss(8, n_global=2, n_views=10)
    assert (paper.n_terms, paper.n_dm_terms, paper.n_cv_terms) == (18, 2, 16)
    s, t = random_outputs(n_views=10, k=8, seed=1)
    terms = hand_loss(s, t, torch.zeros(1, 8), 2, 10, 0.1, 0.04)
    dm = [v for (_, s_view), v in terms.items() if s_view < 2]
    cv = [v for (_, s_view), v in terms.items() if s_view >= 2]
    assert (len(dm), len(cv)) == (2, 16)

    def loss(**weights):
        return EndoFMLoss(8, 2, 10, **weights)(s, t, 0)["loss"].item()

    assert loss() == pytest.approx(np.mean(dm + cv), rel=1e-5)
    assert loss(cv_weight=0.0) == pytest.approx(np.mean(dm), rel=1e-5)
    assert loss(dm_weight=0.0) == pytest.approx(np.mean(cv), rel=1e-5)
    assert loss(cv_weight=1.0, dm_weight=8.0) == pytest.approx((8 * sum(dm) + sum(cv)) / (8 * 2 + 16), rel=1e-5)
    assert loss(cv_weight=2.5, dm_weight=2.5) == pytest.approx(loss(), rel=1e-6)  # only the ratio matters
    # No local views: no cv terms, cv reported as NaN.
    globals_only = EndoFMLoss(8, 2, 2)(s[:6], t, 0)
    assert math.isnan(globals_only["cv"].item())
    assert globals_only["loss"].item() == pytest.approx(np.mean(dm), rel=1e-5)
    with pytest.raises(ValueError, match="no weighted terms"):
        EndoFMLoss(8, 2, 10, cv_weight=0.0, dm_weight=0.0)
    with pytest.raises(ValueError, match="no weighted terms"):
        EndoFMLoss(8, 1, 3, cv_weight=0.0)  # one global view has no dm term


def test_loss_center_update_and_state():
    s1, t1 = random_outputs(seed=2)
    s2, t2 = random_outputs(seed=3)
    loss_fn = EndoFMLoss(5, 2, 4)
    assert list(loss_fn.state_dict()) == ["center"]  # the official ``dino_loss`` state
    out1 = loss_fn(s1, t1, 0)
    c1 = 0.1 * t1.mean(dim=0, keepdim=True)
    torch.testing.assert_close(loss_fn.center, c1)
    assert out1["center_norm"].item() == pytest.approx(c1.norm().item(), rel=1e-6)
    out2 = loss_fn(s2, t2, 0)  # computed with c1, then c2 = 0.9 c1 + 0.1 mean(t2)
    terms = hand_loss(s2, t2, c1, 2, 4, 0.1, 0.04)
    assert out2["loss"].item() == pytest.approx(np.mean(list(terms.values())), rel=1e-5)
    torch.testing.assert_close(loss_fn.center, 0.9 * c1 + 0.1 * t2.mean(dim=0, keepdim=True))
    before = loss_fn.center.clone()
    loss_fn(s2, t2, 0, update_center=False)
    assert torch.equal(loss_fn.center, before)


def test_loss_gradients_fp32_under_autocast_and_entropy():
    s, t = random_outputs(k=6)
    s.requires_grad_(True)
    t.requires_grad_(True)
    loss_fn = EndoFMLoss(6, 2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss_fn(s.bfloat16(), t.bfloat16(), 0)
    assert out["loss"].dtype == torch.float32 and loss_fn.center.dtype == torch.float32
    out["loss"].backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None  # the teacher gets no gradient

    uniform = EndoFMLoss(6, 2, 4)(torch.randn(12, 6), torch.full((6, 6), 0.7), 0)
    assert uniform["teacher_entropy"].item() == pytest.approx(math.log(6), rel=1e-6)
    peaked = torch.zeros(6, 6)
    peaked[:, 2] = 10.0
    assert EndoFMLoss(6, 2, 4)(torch.randn(12, 6), peaked, 0)["teacher_entropy"].item() < 1e-6


def test_loss_rejects_bad_shapes_and_epochs():
    loss_fn = EndoFMLoss(5, 2, 4, epochs=2)
    s, t = random_outputs()
    with pytest.raises(ValueError, match=r"student output has 8 rows, expected 12"):
        loss_fn(s[:8], t, 0)
    with pytest.raises(ValueError, match=r"student output must be \(4·B, 5\) for 4 views, got \(9, 5\)"):
        loss_fn(s[:9], t, 0)
    with pytest.raises(ValueError, match=r"teacher output must be \(2·B, 5\) for 2 views, got \(6, 4\)"):
        loss_fn(s, t[:, :4], 0)
    with pytest.raises(ValueError, match=r"epoch 2 is outside the schedule's \[0, 2\)"):
        loss_fn(s, t, 2)
    with pytest.raises(ValueError, match="need 1 <= n_global <= n_views"):
        EndoFMLoss(5, 3, 2)


def test_teacher_temperature_schedule():
    np.testing.assert_allclose(teacher_temperature_schedule(0.04, 0.07, 3, 5), [0.04, 0.055, 0.07, 0.07, 0.07])
    np.testing.assert_array_equal(teacher_temperature_schedule(0.04, 0.04, 0, 4), [0.04] * 4)
    loss_fn = EndoFMLoss(5, 2, 4, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=3, epochs=5)
    assert [loss_fn.teacher_temp(e) for e in range(5)] == pytest.approx([0.04, 0.055, 0.07, 0.07, 0.07])
    with pytest.raises(ValueError, match=r"warmup_epochs must be in \[0, 5\], got 6"):
        teacher_temperature_schedule(0.04, 0.07, 6, 5)
    with pytest.raises(ValueError, match="temperatures must be > 0"):
        teacher_temperature_schedule(0.0, 0.07, 0, 5)


# ------------------------------------------------------------------------------------- training helpers


class Tiny(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.lin = nn.Linear(3, 2)
        self.norm = nn.BatchNorm1d(2)  # has buffers
        with torch.no_grad():
            self.norm.running_mean.normal_()


def test_ema_update_exact_values():
    teacher, student = Tiny(0), Tiny(1)
    t0 = {k: v.clone() for k, v in teacher.state_dict().items()}
    s0 = {k: v.clone() for k, v in student.state_dict().items()}
    ema_update(teacher, student, 1.0)
    assert all(torch.equal(teacher.lin.state_dict()[k], t0["lin." + k]) for k in ("weight", "bias"))
    assert torch.equal(teacher.norm.running_mean, s0["norm.running_mean"])  # buffers are copied
    ema_update(teacher, student, np.float32(0.9))  # momentum schedules are NumPy arrays
    torch.testing.assert_close(teacher.lin.weight, 0.9 * t0["lin.weight"] + 0.1 * s0["lin.weight"])
    torch.testing.assert_close(teacher.lin.bias, 0.9 * t0["lin.bias"] + 0.1 * s0["lin.bias"])
    ema_update(teacher, student, 0.0)
    assert all(torch.equal(v, s0[k]) for k, v in teacher.state_dict().items())
    assert student.state_dict().keys() == s0.keys()
    assert all(torch.equal(v, s0[k]) for k, v in student.state_dict().items())  # the student is untouched


def test_ema_update_on_models_with_a_frozen_head_and_bad_pairs():
    student = micro_model(seed=1)
    teacher = micro_model(seed=2)
    ema_update(teacher, student, 0.0)
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in teacher.state_dict().items())
    with pytest.raises(ValueError, match=r"only in teacher: extra"):
        ema_update(nn.ParameterDict({"extra": nn.Parameter(torch.zeros(1))}), nn.ParameterDict({}), 0.5)
    with pytest.raises(ValueError, match=r"shapes differ: weight \[2, 3\] vs \[2, 4\]"):
        ema_update(nn.Linear(3, 2), nn.Linear(4, 2), 0.5)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\], got 1.5"):
        ema_update(teacher, student, 1.5)


def test_param_groups_follow_the_original():
    model = micro_model()
    decayed, not_decayed = param_groups(model)
    assert "weight_decay" not in decayed and not_decayed["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    d = {names[id(p)] for p in decayed["params"]}
    nd = {names[id(p)] for p in not_decayed["params"]}
    # Positional/time embeddings and the CLS token are decayed although no_weight_decay() lists them.
    assert {
        "backbone.pos_embed",
        "backbone.time_embed",
        "backbone.cls_token",
        "backbone.patch_embed.proj.weight",
        "backbone.blocks.0.attn.qkv.weight",
        "head.mlp.0.weight",
        f"head.{DIRECTION}",
    } <= d
    assert {
        "backbone.blocks.0.attn.qkv.bias",
        "backbone.blocks.1.norm1.weight",
        "backbone.norm.weight",
        "backbone.patch_embed.proj.bias",
        "head.mlp.4.bias",
    } <= nd
    assert not d & nd
    assert d | nd == {n for n, p in model.named_parameters() if p.requires_grad}
    assert f"head.{MAGNITUDE}" not in d | nd  # frozen
    torch.optim.AdamW(param_groups(model), lr=1e-3, weight_decay=0.04)  # accepted as is


def test_clip_gradients_is_per_tensor():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    big = torch.full((3, 4), 10.0 / math.sqrt(12))  # norm 10
    small = torch.full((3,), 1.0 / math.sqrt(3))  # norm 1
    model[0].weight.grad, model[0].bias.grad = big.clone(), small.clone()
    model[1].weight.grad = torch.zeros(2, 3)  # model[1].bias has no gradient
    norms = clip_gradients(model, 3.0)
    assert norms == pytest.approx([10.0, 1.0, 0.0], abs=1e-5)
    assert model[0].weight.grad.norm().item() == pytest.approx(3.0, rel=1e-5)
    assert model[0].weight.grad.norm().item() <= 3.0
    torch.testing.assert_close(model[0].weight.grad, big * 3.0 / (10.0 + 1e-6))
    assert torch.equal(model[0].bias.grad, small)  # under the threshold: unchanged, not scaled with the big one
    assert torch.equal(model[1].weight.grad, torch.zeros(2, 3)) and model[1].bias.grad is None
    assert clip_gradients(nn.Linear(2, 2), 3.0) == []
    with pytest.raises(ValueError, match="clip must be > 0"):
        clip_gradients(model, 0.0)


def test_cancel_last_layer_gradients():
    model = micro_model()
    model(paper_views(batch=1)[:2]).sum().backward()
    last = f"head.{DIRECTION}"
    assert cancel_last_layer_gradients(model, epoch=1, freeze_last_layer=1) == []
    assert dict(model.named_parameters())[last].grad is not None
    assert cancel_last_layer_gradients(model, epoch=0, freeze_last_layer=1) == [last]
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads[last] is None and grads["head.mlp.4.weight"] is not None and grads["backbone.norm.weight"] is not None
    with pytest.raises(ValueError, match="no parameter under a 'last_layer' module"):
        cancel_last_layer_gradients(nn.Linear(2, 2), epoch=0, freeze_last_layer=1)


def test_center_update_all_reduces_over_ranks(monkeypatch):
    """A real one-rank gloo group, with a second rank simulated in ``all_reduce``: the centre moves by
    the mean over both ranks' rows (sum all-reduced, divided by rows x world size)."""
    other_rank_rows = torch.arange(12.0).reshape(3, 4) + 100
    rows = torch.arange(12.0).reshape(3, 4)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        loss_fn = EndoFMLoss(4, 1, 2)
        loss_fn.update_center(rows)  # real all_reduce, world size 1
        torch.testing.assert_close(loss_fn.center, 0.1 * rows.mean(dim=0, keepdim=True))

        real_all_reduce = dist.all_reduce

        def two_ranks(tensor, *args, **kwargs):
            real_all_reduce(tensor, *args, **kwargs)
            tensor += other_rank_rows.sum(dim=0, keepdim=True)

        monkeypatch.setattr(dist, "all_reduce", two_ranks)
        monkeypatch.setattr(dist, "get_world_size", lambda *args, **kwargs: 2)
        loss_fn = EndoFMLoss(4, 1, 2)
        loss_fn.update_center(rows)
        both = torch.cat([rows, other_rank_rows]).mean(dim=0, keepdim=True)
        torch.testing.assert_close(loss_fn.center, 0.1 * both)
    finally:
        dist.destroy_process_group()


def test_ema_update_unwraps_a_data_parallel_student():
    """``_unwrap`` treats DistributedDataParallel and DataParallel alike; DataParallel needs no process
    group (a real DDP wrapper costs seconds of torch._dynamo import)."""
    student = nn.DataParallel(Tiny(1))
    teacher = Tiny(0)
    assert next(iter(dict(student.named_parameters()))).startswith("module.")
    ema_update(teacher, student, 0.0)
    assert torch.equal(teacher.lin.weight, student.module.lin.weight)
    ema_update(nn.DataParallel(teacher), student, 1.0)  # a wrapped teacher works too


def test_batch_entropy_tells_the_collapses_apart():
    loss = EndoFMLoss(8, 2, 3, teacher_temp=0.1)
    same = torch.zeros(8, 8)
    same[:, 3] = 5.0  # every row on one prototype: both entropies near 0
    out = loss(torch.randn(12, 8), same, 0, update_center=False)
    assert out["batch_entropy"].item() < 1e-3 and out["teacher_entropy"].item() < 1e-3
    spread = torch.full((8, 8), -5.0)
    spread[torch.arange(8), torch.arange(8)] = 5.0  # one prototype per row: sharp rows, a spread batch
    out = loss(torch.randn(12, 8), spread, 0, update_center=False)
    assert out["teacher_entropy"].item() < 1e-3
    assert out["batch_entropy"].item() == pytest.approx(math.log(8), rel=1e-4)


def test_sinkhorn_targets_are_equipartitioned_and_sharpen_like_softmax():
    from endofm.pretraining.objective import sinkhorn_knopp

    torch.manual_seed(0)
    teacher = torch.randn(16, 6)
    q = sinkhorn_knopp(teacher, 0.5, iterations=200)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(16))
    torch.testing.assert_close(q.sum(dim=0), torch.full((6,), 16 / 6), rtol=1e-3, atol=1e-3)
    # a batch that already is balanced is left as the plain softmax
    balanced = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    torch.testing.assert_close(sinkhorn_knopp(balanced, 1.0, 3), balanced.softmax(dim=1))
    loss = EndoFMLoss(6, 2, 3, centering="sinkhorn", teacher_temp=0.5)
    out = loss(torch.randn(24, 6), teacher, 0)
    assert out["batch_entropy"].item() == pytest.approx(math.log(6), abs=0.05)
    with pytest.raises(ValueError, match="centering"):
        EndoFMLoss(6, 2, 3, centering="mean")

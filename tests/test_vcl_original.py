"""VCL (endofm/pretraining/vcl.py) against the original's formulas (shvdiwnkozbw/Self-supervised-Video-Concept,
``model.py`` and ``train.py``), written out here in the original's layout (batch first, streams second) with
explicit loops where the original loops: the five heads, the loss sum and its weights, the fidelity MLP on
raw scores, the local-concept module and matching, and the static views augmented on their own."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from endofm.config import from_dict
from endofm.pretraining import vcl
from endofm.pretraining.vcl import HEADS, STREAMS, VCLConfig, VCLDataset, VCLLoss, VCLModel, local_match

B, K, D, P = 4, 12, 32, 8
CFG = {
    "backbone": {"name": "vit_micro_patch8"},
    "views": {"frames": 2, "size": 16},
    "num_concepts": K,
    "proj_dim": P,
    "queue_length": 6,
    "local_topk": 9,  # the original's topk(k=10)[:, -1] threshold
    "precision": "fp32",
    "device": "cpu",
}


def config(**overrides) -> VCLConfig:
    return from_dict(VCLConfig, {**CFG, **overrides}, "test")


# ---------------------------------------------------------------- the original's formulas, written out


def ref_contrast(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """train.py ``contrast``: cosine logits / 0.07, cross-entropy with the diagonal as the labels."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    logits = q @ k.t() / 0.07
    return (logits.logsumexp(dim=1) - logits.diagonal()).mean()


def ref_sinkhorn(scores: torch.Tensor, eps: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """model.py ``sinkhorn``: exp(scores / eps) as (K, rows), total 1, then rows to 1/K and columns to 1/rows in
    turn; finally each column (sample) divided by its sum."""
    q = torch.exp(scores / eps - (scores / eps).max()).t()
    q = q / q.sum()
    k, rows = q.shape
    for _ in range(iterations):
        q = q * ((1 / k) / q.sum(dim=1)).unsqueeze(1)
        q = q * ((1 / rows) / q.sum(dim=0)).unsqueeze(0)
    return (q / q.sum(dim=0, keepdim=True)).t()


def ref_calc_entropy(prob, queue, pos, neg):
    """model.py ``calc_entropy``: ``prob`` (B, 6, K) scores, ``queue`` (B + L, 6, K) the batch then the queue."""
    loss = 0.0
    for i in pos:
        target = ref_sinkhorn(queue[:, i])[: prob.shape[0]]
        sub = 0.0
        for j in pos:
            if i != j:
                sub = sub - (target * F.log_softmax(prob[:, j] / 0.1, dim=1)).sum(1).mean()
        loss = loss + sub / (len(pos) - 1)
    loss = loss / len(pos)
    entropy = 0.0
    for i in neg:
        p = F.softmax(prob[:, i] / 0.1, dim=1)
        entropy = entropy + (p * torch.log(p)).sum(1).mean()
    return loss, entropy / len(neg)


def ref_self_reconstruct(rebuilt: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
    """model.py ``self_reconstruct``'s loss: minus the mean cosine of the (B, 2, D) rebuilt and detached features."""
    return -(F.normalize(feat, dim=-1) * F.normalize(rebuilt, dim=-1)).sum(-1).mean()


def ref_local_match(templates: torch.Tensor, prob: torch.Tensor) -> torch.Tensor:
    """model.py ``local_match`` after the LIT, one element at a time: ``templates`` (B, 2, n, D) normalised,
    ``prob`` (B, 2, n) scores; the key side is detached."""
    b, n = templates.shape[0], templates.shape[2]
    loss, pairs = 0.0, 0.0
    for i in range(2):
        for j in range(2):
            if i == j:
                continue
            mq = torch.topk(prob[:, i], k=10, dim=1)[0][:, -1]
            mk = torch.topk(prob[:, j], k=10, dim=1)[0][:, -1]
            for s in range(b):
                for c in range(n):
                    if not (prob[s, i, c] > mq[s] and prob[s, j, c] > mk[s]):
                        continue
                    pairs += 1
                    for other in range(b):
                        cos = (templates[s, i, c] * templates[other, j, c].detach()).sum()
                        delta = torch.sqrt(2 - 2 * cos + 1e-5)
                        if other == s:
                            loss = loss + delta**2
                        else:
                            loss = loss + torch.relu(1.4 - delta) ** 2 / (b - 1)
    return loss / (pairs + 1)


def ref_lit(module: nn.Module, tokens: torch.Tensor, templates: torch.Tensor) -> torch.Tensor:
    """model.py ``LocalfeatureIntegrationTransformer.forward`` with T = 1 (and the normalisation of
    ``local_match``), on ``module``'s weights: ``tokens`` (B, L, D), ``templates`` (n, D)."""
    dim = templates.shape[-1]

    def ln(x, norm):
        return F.layer_norm(x, (dim,), norm.weight, norm.bias, norm.eps)

    x = ln(tokens, module.norm_inputs)
    k, v = x @ module.key.weight.t(), x @ module.value.weight.t()
    t = templates.unsqueeze(0).repeat_interleave(tokens.shape[0], dim=0)  # (B, n, D)
    prev = t
    q = ln(t, module.norm_templates) @ module.query.weight.t() * dim**-0.5
    attn = torch.einsum("bnd,bld->bln", q, k).softmax(dim=-1) + 1e-8
    attn = attn / attn.sum(dim=-2, keepdim=True)
    t = torch.einsum("bld,bln->bnd", v, attn) + prev
    lin1, lin2 = module.mlp[0], module.mlp[2]
    t = F.linear(torch.relu(F.linear(ln(t, module.norm_mlp), lin1.weight, lin1.bias)), lin2.weight, lin2.bias) + t
    return F.normalize(t, dim=-1)


def random_outputs(seed: int = 0) -> dict[str, torch.Tensor]:
    """Model outputs of the shapes :class:`VCLModel` returns, with scores in the cosine range."""
    g = torch.Generator().manual_seed(seed)
    return {
        "feature": torch.randn(6, B, D, generator=g),
        "z": F.normalize(torch.randn(5, 2, B, P, generator=g), dim=-1),
        "scores": torch.rand(6, B, 2 * K, generator=g) * 2 - 1,
        "reconstruction": torch.randn(6, B, D, generator=g),
        "local_rgb": F.normalize(torch.randn(2, B, 2 * K, D, generator=g), dim=-1),
        "local_static": F.normalize(torch.randn(2, B, K, D, generator=g), dim=-1),
        "local_dynamic": F.normalize(torch.randn(2, B, K, D, generator=g), dim=-1),
    }


# ---------------------------------------------------------------- tests


def test_five_projection_heads_as_the_original():
    """fvv, fvs, fvd on the RGB clips, fsv on the static views, fdv on the dynamic views; Linear–ReLU–Linear."""
    torch.manual_seed(0)
    model = VCLModel(config()).train()
    assert list(model.heads) == ["fvv", "fvs", "fvd", "fsv", "fdv"]
    for head in model.heads.values():
        assert [type(m) for m in head] == [nn.Linear, nn.ReLU, nn.Linear]
        assert (head[0].in_features, head[0].out_features, head[2].out_features) == (D, D, P)
    views = [torch.randn(2, 3, 2, 16, 16) for _ in STREAMS]
    out = model(views)
    streams = {"fvv": (0, 1), "fvs": (0, 1), "fvd": (0, 1), "fsv": (2, 3), "fdv": (4, 5)}
    assert HEADS == streams
    for h, (name, (a, c)) in enumerate(streams.items()):
        for slot, stream in enumerate((a, c)):
            expected = F.normalize(model.heads[name](out["feature"][stream]), dim=-1)
            torch.testing.assert_close(out["z"][h, slot], expected)


def test_losses_sum_as_the_original_train_py():
    """Every term and the total against train.py lines 96-98 (after epoch 10): I_vv + I_vd + I_vs + L_s + L_d
    + 0.1 E_s + 0.1 E_d + R_v + R_s + R_d + local_v + local_s + local_d, with a filled queue."""
    cfg = config()
    loss = VCLLoss(cfg)
    g = torch.Generator().manual_seed(1)
    queue = torch.rand(6, cfg.queue_length, 2 * K, generator=g) * 2 - 1
    loss.queue.copy_(queue)
    loss.queue_filled.fill_(cfg.queue_length)
    out = random_outputs()
    got = loss(out, epoch=1, local=True)

    z = out["z"]
    rgb_v1, rgb_v2, rgb_s1, rgb_s2, rgb_d1, rgb_d2 = z[0, 0], z[0, 1], z[1, 0], z[1, 1], z[2, 0], z[2, 1]
    frame_v1, frame_v2, res_v1, res_v2 = z[3, 0], z[3, 1], z[4, 0], z[4, 1]
    i_vv = (ref_contrast(rgb_v1, rgb_v2) + ref_contrast(rgb_v2, rgb_v1)) / 2
    i_vs = (ref_contrast(rgb_s1, frame_v2) + ref_contrast(rgb_s2, frame_v1) + ref_contrast(frame_v1, rgb_s2)
            + ref_contrast(frame_v2, rgb_s1)) / 2  # fmt: skip
    i_vd = (ref_contrast(rgb_d1, res_v2) + ref_contrast(rgb_d2, res_v1) + ref_contrast(res_v1, rgb_d2)
            + ref_contrast(res_v2, rgb_d1)) / 2  # fmt: skip
    prob = out["scores"].transpose(0, 1)  # (B, 6, 2K), the original's layout
    both = torch.cat([prob, queue.transpose(0, 1)], dim=0)
    l_s, e_s = ref_calc_entropy(prob[..., :K], both[..., :K], [0, 1, 2, 3], [4, 5])
    l_d, e_d = ref_calc_entropy(prob[..., K:], both[..., K:], [0, 1, 4, 5], [2, 3])
    feat, rebuilt = out["feature"].transpose(0, 1), out["reconstruction"].transpose(0, 1)
    r_v, r_s, r_d = (ref_self_reconstruct(rebuilt[:, a : a + 2], feat[:, a : a + 2]) for a in (0, 2, 4))
    lv = ref_local_match(out["local_rgb"].transpose(0, 1), prob[:, 0:2])
    ls = ref_local_match(out["local_static"].transpose(0, 1), prob[:, 2:4, :K])
    ld = ref_local_match(out["local_dynamic"].transpose(0, 1), prob[:, 4:6, K:])
    expected = {
        "nce_vv": i_vv,
        "nce_vs": i_vs,
        "nce_vd": i_vd,
        "concept": l_s + l_d,
        "diversity": e_s + e_d,
        "fidelity": r_v + r_s + r_d,
        "local": lv + ls + ld,
    }
    for name, value in expected.items():
        assert got[name].item() == pytest.approx(value.item(), rel=1e-5, abs=1e-6), name
    total = i_vv + i_vd + i_vs + l_s + l_d + 0.1 * e_s + 0.1 * e_d + r_v + r_s + r_d + lv + ls + ld
    assert got["loss"].item() == pytest.approx(total.item(), rel=1e-5)
    # The weights are the original's and scale their sums.
    weights = {"nce_weight": 1.0, "concept_weight": 1.0, "diversity_weight": 0.1, "fidelity_weight": 1.0}
    assert {k: getattr(VCLConfig(), k) for k in weights} == weights and VCLConfig().local_weight == 1.0
    heavier = VCLLoss(config(diversity_weight=0.5, local_weight=2.0))
    heavier.queue.copy_(queue)
    heavier.queue_filled.fill_(cfg.queue_length)
    again = heavier(out, epoch=1, local=True)
    assert again["loss"].item() == pytest.approx((total + 0.4 * (e_s + e_d) + lv + ls + ld).item(), rel=1e-5)


def test_fidelity_mlp_reads_raw_scores_with_batchnorm():
    """gv (2K -> D), gs and gd (K -> D): Linear–BN–ReLU–Linear on the raw prototype scores of both views of a
    stream type at once (the original's view(-1, ·) batch), static views their static K, dynamic their dynamic K."""
    torch.manual_seed(0)
    model = VCLModel(config()).train()
    for kind, width in (("rgb", 2 * K), ("static", K), ("dynamic", K)):
        mlp = model.reconstruct[kind]
        assert [type(m) for m in mlp] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
        assert (mlp[0].in_features, mlp[0].out_features, mlp[3].out_features) == (width, D, D)
    out = model([torch.randn(3, 3, 2, 16, 16) for _ in STREAMS])
    s = out["scores"]
    for kind, a, cols in (("rgb", 0, slice(0, 2 * K)), ("static", 2, slice(0, K)), ("dynamic", 4, slice(K, 2 * K))):
        mlp = model.reconstruct[kind]
        x = torch.cat([s[a, :, cols], s[a + 1, :, cols]])  # (2B, n)
        h = mlp[0](x)  # BatchNorm in training mode: the statistics of these 2B rows
        h = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + mlp[1].eps) * mlp[1].weight + mlp[1].bias
        expected = mlp[3](torch.relu(h)).view(2, 3, D)
        torch.testing.assert_close(out["reconstruction"][a : a + 2], expected, rtol=1e-5, atol=1e-5)
    # The scores are not detached: the fidelity term trains the prototypes and the concept MLP too.
    cos = F.cosine_similarity(out["reconstruction"], out["feature"].detach(), dim=-1)
    (-cos.mean()).backward()
    assert model.prototypes["static"].weight.grad.abs().sum() > 0
    assert model.concept_mlp["dynamic"][0].weight.grad.abs().sum() > 0


def test_local_concepts_module_as_the_original_lit():
    torch.manual_seed(0)
    model = VCLModel(config()).train()
    with torch.no_grad():  # LayerNorms away from their initial identity, to test them
        for norm in (model.local.norm_inputs, model.local.norm_templates, model.local.norm_mlp):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.2, 0.2)
    tokens = torch.randn(3, 10, D)
    for kind, rows in (("rgb", slice(0, 2 * K)), ("static", slice(0, K)), ("dynamic", slice(K, 2 * K))):
        templates = model.prototypes[kind].weight[rows]
        expected = ref_lit(model.local, tokens, templates)
        torch.testing.assert_close(model.local(tokens, templates), expected, rtol=1e-5, atol=1e-6)
    # The model passes each stream type its matching prototypes: the static views the static half, and so on.
    views = [torch.randn(2, 3, 2, 16, 16) for _ in STREAMS]
    out = model(views, local=True)
    patches = model.backbone.forward_features(torch.cat(views), dense=True).patches.flatten(1, 3).view(6, 2, -1, D)
    for kind, a, rows in (("rgb", 0, slice(0, 2 * K)), ("static", 2, slice(0, K)), ("dynamic", 4, slice(K, 2 * K))):
        templates = model.prototypes[kind].weight[rows]
        for slot in range(2):
            expected = ref_lit(model.local, patches[a + slot], templates)
            torch.testing.assert_close(out[f"local_{kind}"][slot], expected, rtol=1e-4, atol=1e-5)


def test_local_match_by_hand():
    """Two samples, two concepts, top-1 present. Sample 0 has concept 0 in both views, sample 1 in neither.
    Order (0, 1): δ(0, 0)² = 2 − 2·0 + 1e-5 (orthogonal), the one negative δ(0, 1) = sqrt(1e-5) (same vector):
    (1.4 − sqrt(1e-5))² / (2 − 1). Order (1, 0) gives the same; counted pairs 2, so the sum over 3."""
    scores = torch.tensor([[[0.9, 0.1], [0.1, 0.9]], [[0.8, 0.2], [0.7, 0.3]]])  # (view, sample, concept)
    local = torch.zeros(2, 2, 2, 2)  # (view, sample, concept, D)
    local[0, 0, 0] = torch.tensor([1.0, 0.0])
    local[1, 0, 0] = torch.tensor([0.0, 1.0])
    local[1, 1, 0] = torch.tensor([1.0, 0.0])
    local[0, 1, 0] = torch.tensor([0.0, 1.0])
    local[:, :, 1] = torch.tensor([1.0, 0.0])
    one_order = (2 + 1e-5) + (1.4 - math.sqrt(1e-5)) ** 2
    assert local_match(local, scores, topk=1, margin=1.4).item() == pytest.approx(2 * one_order / 3, rel=1e-5)
    # Against the element-wise transcription at the original's top-10, on random features; keys are detached.
    g = torch.Generator().manual_seed(3)
    local = F.normalize(torch.randn(2, 5, 16, 6, generator=g), dim=-1).requires_grad_(True)
    twin = local.detach().transpose(0, 1).clone().requires_grad_(True)
    scores = torch.rand(2, 5, 16, generator=g)
    got = local_match(local, scores, topk=9, margin=1.4)
    expected = ref_local_match(twin, scores.transpose(0, 1))
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    got.backward()
    expected.backward()  # gradients through the query side only
    torch.testing.assert_close(local.grad, twin.grad.transpose(0, 1), rtol=1e-4, atol=1e-6)
    assert local.grad[0].abs().sum() > 0 and local.grad[1].abs().sum() > 0


class FlatReader:
    """Serves in-memory videos (``clips``) in place of VideoReader."""

    clips: dict[str, np.ndarray] = {}

    def __init__(self, path):
        self.frames = self.clips[str(path)]
        self.num_frames = len(self.frames)

    def get_frames(self, indices):
        return self.frames[np.asarray(indices)]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def textured_video(n: int = 40, height: int = 24, width: int = 32) -> np.ndarray:
    """``n`` frames of a random texture that moves by one pixel per frame: every frame differs."""
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (height, width + n, 3), dtype=np.uint8)
    return np.stack([texture[:, t : t + width] for t in range(n)])


@pytest.mark.parametrize("augmented", [False, True])
def test_static_views_are_augmented_on_their_own(monkeypatch, augmented):
    """The static view of clip k is its raw frame at one position (the same for both clips), repeated, with
    its own crop: without augmentation it equals that frame of the RGB clip; with crops it differs from it."""
    monkeypatch.setattr(vcl, "VideoReader", type("Reader", (FlatReader,), {"clips": {"v": textured_video()}}))
    views = {"frames": 4, "size": 16, "color_jitter": 0.0, "grayscale": 0.0, "hue": 0.0}
    if augmented:
        views |= {"scale": [0.2, 0.5], "hflip": 0.5}
    else:  # the whole 24 x 32 frame, never flipped
        views |= {"scale": [1.0, 1.0], "ratio": [4 / 3, 4 / 3], "hflip": 0.0}
    cfg = from_dict(VCLConfig, {**CFG, "views": views}, "test").views
    ds = VCLDataset(pd.DataFrame({"path": ["v"], "frames": [40]}), cfg, seed=0)
    same = []
    for epoch in range(8):
        ds.set_epoch(epoch)
        rgb1, rgb2, static1, static2, *_ = ds[0]
        for clip, static in ((rgb1, static1), (rgb2, static2)):
            assert torch.equal(static, static[:, :1].expand_as(static))  # one frame repeated
            matches = [torch.allclose(static[:, 0], clip[:, t], atol=1e-5) for t in range(4)]
            same.append(any(matches))
        if not augmented:  # the same position in both clips
            where = [
                [torch.allclose(s[:, 0], c[:, t], atol=1e-5) for t in range(4)]
                for c, s in ((rgb1, static1), (rgb2, static2))
            ]
            assert where[0] == where[1] and sum(where[0]) >= 1
    assert all(same) if not augmented else not any(same)

import numpy as np
import pytest
import torch

from endofm.config import to_dict
from endofm.data.video import write_video
from endofm.features import (
    clip_starts,
    extract_features,
    load_features,
    load_pretrained_backbone,
    preprocess,
    save_features,
)
from endofm.models.checkpoint import save_checkpoint
from endofm.models.vit import BackboneConfig, build_backbone


@pytest.mark.parametrize(
    "n, window, stride, expected",
    [(5, 8, 4, [0]), (8, 8, 4, [0]), (20, 8, 4, [0, 4, 8, 12]), (21, 8, 4, [0, 4, 8, 12, 13]), (30, 8, 100, [0, 22])],
)
def test_clip_starts_cover_the_video(n, window, stride, expected):
    starts = clip_starts(n, window, stride)
    assert starts == expected
    assert starts[-1] + window >= n or n <= window


def test_preprocess_shape_and_normalisation():
    frames = np.full((3, 40, 60, 3), 255, dtype=np.uint8)
    x = preprocess(frames, 32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert x.shape == (3, 3, 32, 32)
    assert torch.allclose(x, torch.ones_like(x), atol=1e-5)


@pytest.fixture
def micro_checkpoints(tmp_path):
    torch.manual_seed(0)
    cfg = BackboneConfig(name="vit_micro_patch8")
    model = build_backbone(cfg)
    ours = save_checkpoint(
        tmp_path / "ours.pt",
        config={"backbone": to_dict(cfg)},
        teacher={f"backbone.{k}": v for k, v in model.state_dict().items()},
    )
    official = tmp_path / "official.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in model.state_dict().items()}}, official)
    return model.eval(), ours, official


def test_features_from_ours_and_official_agree(tmp_path, micro_checkpoints):
    model, ours, official = micro_checkpoints
    frames = np.random.default_rng(0).integers(0, 255, (30, 40, 48, 3), dtype=np.uint8)
    video = write_video(tmp_path / "v.mp4", frames)
    a = extract_features(load_pretrained_backbone(ours), [video], clip_frames=4, stride=10, size=32, progress=False)
    b = extract_features(
        load_pretrained_backbone(official, "vit_micro_patch8"),
        [video],
        clip_frames=4,
        stride=10,
        size=32,
        progress=False,
        batch_size=1,
    )
    assert a["start_frame"].tolist() == [0, 10, 20, 26]
    assert np.allclose(np.stack(a["embedding"]), np.stack(b["embedding"]), atol=1e-5)
    assert np.stack(a["embedding"]).shape == (4, model.config.embed_dim)
    path = save_features(a, tmp_path / "f.npz")
    back = load_features(path)
    assert back["video"].tolist() == a["video"].tolist()
    assert np.array_equal(np.stack(back["embedding"]), np.stack(a["embedding"]).astype(np.float32))
    with pytest.raises(ValueError, match="npz or .parquet"):
        save_features(a, tmp_path / "f.csv")
    assert not list(tmp_path.glob("*.tmp*"))

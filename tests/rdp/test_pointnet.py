"""PointNetEncoder (DP3-style point-cloud encoder) and configs/encoder/pointnet.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from rdp.encoders import PointNetEncoder

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "encoder"
DEFAULT_PARAMETERS = 59_072  # 3 -> 64 -> 128 -> 256 with LayerNorm, projection 256 -> 64 with LayerNorm


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def test_features_shape_and_parameter_count(record_property) -> None:
    model = PointNetEncoder().eval()
    n_params = sum(p.numel() for p in model.parameters())
    record_property("parameters", n_params)
    assert n_params == DEFAULT_PARAMETERS
    with torch.no_grad():
        assert model(torch.randn(4, 512, 3)).shape == (4, model.feature_dim) == (4, 64)
    logits = PointNetEncoder(in_channels=6, num_classes=10, hidden=(16, 32), feature_dim=8)(torch.randn(2, 100, 6))
    assert logits.shape == (2, 10)


def test_point_order_and_repeated_points_do_not_change_the_features() -> None:
    model = PointNetEncoder().eval()
    points = torch.randn(3, 256, 3)
    with torch.no_grad():
        features = model(points)
        shuffled = model(points[:, torch.randperm(256)])
        repeated = model(points[:, torch.arange(400) % 256])  # how sensors.pointcloud pads a small cloud
    torch.testing.assert_close(shuffled, features, atol=1e-6, rtol=0)
    torch.testing.assert_close(repeated, features, atol=1e-6, rtol=0)


def test_a_sample_does_not_depend_on_the_rest_of_the_batch() -> None:
    model = PointNetEncoder().train()  # LayerNorm only: train and eval agree, no batch statistics
    points = torch.randn(5, 128, 3)
    together = model(points)
    for i in range(5):
        torch.testing.assert_close(model(points[i : i + 1]), together[i : i + 1], atol=1e-5, rtol=0)
    together.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_bad_shapes_and_settings_are_refused() -> None:
    with pytest.raises(ValueError, match=r"points \(B, N, 3\)"):
        PointNetEncoder()(torch.randn(2, 3, 64))  # channels first
    with pytest.raises(ValueError, match=r"N >= 1"):
        PointNetEncoder()(torch.randn(2, 0, 3))
    with pytest.raises(ValueError, match="hidden width"):
        PointNetEncoder(hidden=())


def test_config_instantiates_the_default_encoder() -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="pointnet")
    model = instantiate(cfg, _convert_="all")
    assert isinstance(model, PointNetEncoder)
    assert sum(p.numel() for p in model.parameters()) == DEFAULT_PARAMETERS
    assert model(torch.randn(2, 64, 3)).shape == (2, 64)

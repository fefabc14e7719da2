"""ResNetEncoder and the hydra configs in configs/encoder/."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from rdp.encoders import ResNetEncoder, Terminator

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "encoder"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def test_resnet_features_on_camera_image() -> None:
    model = ResNetEncoder(in_channels=3, num_classes=None, width=8, stem_stride=4).eval()
    images = torch.randn(3, 3, 96, 96)
    with torch.no_grad():
        features = model(images)
        alone = model(images[:1])
    assert features.shape == (3, model.feature_dim) == (3, 32)
    torch.testing.assert_close(alone, features[:1], atol=1e-5, rtol=0)


def test_resnet_logits_on_digits() -> None:
    assert ResNetEncoder(in_channels=1, num_classes=10, width=8)(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        ResNetEncoder(in_channels=1)(torch.randn(2, 3, 8, 8))


@pytest.mark.parametrize(
    "name, cls",
    [
        ("terminator", Terminator),
        ("terminator_noslowloss", Terminator),
        ("terminator_noglobal", Terminator),
        ("cnn_baseline", ResNetEncoder),
    ],
)
def test_config_instantiates(name: str, cls: type) -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name=name)
    model = instantiate(cfg, num_classes=10, _convert_="all")
    assert isinstance(model, cls)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    if name == "terminator_noslowloss":
        assert not model.use_slow_loss
    if name == "terminator_noglobal":
        assert "global" not in model.blocks[0].hyper


def test_baseline_is_parameter_matched() -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        terminator = instantiate(compose(config_name="terminator"), num_classes=10, _convert_="all")
        cnn = instantiate(compose(config_name="cnn_baseline"), num_classes=10, _convert_="all")
    n_t = sum(p.numel() for p in terminator.parameters())
    n_c = sum(p.numel() for p in cnn.parameters())
    assert abs(n_t - n_c) / n_t < 0.2

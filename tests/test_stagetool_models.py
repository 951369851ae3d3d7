"""Stagetool networks: gray input, light and paper backbones, anchors, cards that rebuild the network."""

from __future__ import annotations

import pytest
import torch

from app.core.errors import ModelError
from app.pipelines.stagetool.models import ModelConfig, build_backbone, build_model, count_parameters, load_network
from stagetool_testing import one_torch_thread  # noqa: F401  (autouse fixture)


def tiny(kind: str, tile: int = 64) -> ModelConfig:
    n = 5 if kind == "tubules" else 9
    return ModelConfig(kind, "tiny", n, tile_size=tile, fpn_channels=16, head_dim=32, mask_head_layers=1,
                       anchor_sizes=(8, 16, 32, 64, 128), detections_per_img=20)


@pytest.mark.parametrize("kind", ["tubules", "cells"])
def test_tiny_models_train_and_predict_on_gray_tiles(kind):
    torch.manual_seed(0)
    net = build_model(tiny(kind))
    assert net.backbone.body.conv1.in_channels == 1
    images = [torch.rand(1, 64, 64), torch.rand(1, 64, 64)]
    target = {"boxes": torch.tensor([[8.0, 8.0, 30.0, 30.0]]), "labels": torch.tensor([3])}
    if kind == "tubules":
        masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
        masks[0, 8:30, 8:30] = 1
        target["masks"] = masks
    net.train()
    losses = net(images, [target, target])
    assert ("loss_mask" in losses) == (kind == "tubules")
    sum(losses.values()).backward()
    net.eval()
    with torch.no_grad():
        out = net(images)
    assert len(out) == 2 and out[0]["boxes"].shape[1] == 4
    assert ("masks" in out[0]) == (kind == "tubules")
    # the transform must not resize a tile: boxes stay in tile pixels
    assert net.transform.min_size == (64,) and net.transform.max_size == 64


def test_paper_backbone_takes_one_channel_without_download():
    config = ModelConfig("cells", "resnet18", 9, tile_size=64)
    backbone = build_backbone(config)
    assert backbone.body.conv1.in_channels == 1
    features = backbone(torch.rand(1, 1, 64, 64))
    assert list(features) == ["0", "1", "2", "3", "pool"]
    # GroupNorm, not frozen BatchNorm: the network is trained from scratch
    assert any(isinstance(m, torch.nn.GroupNorm) for m in backbone.modules())


def test_unknown_backbone_and_fields_are_model_errors():
    with pytest.raises(ModelError, match="unknown backbone"):
        build_backbone(ModelConfig("cells", "vgg11", 9))
    with pytest.raises(ModelError, match="unknown fields"):
        ModelConfig.from_dict({"kind": "cells", "backbone": "tiny", "num_classes": 9, "colour": "red"})


def test_card_roundtrip_rebuilds_the_same_network(tmp_path):
    from app.core.modelcard import ModelCard, load_state_dict, save_model

    config = tiny("cells")
    net = build_model(config)
    card = ModelCard(name="t", pipeline="stagetool-cells", architecture="Faster R-CNN", classes=[str(i) for i in range(9)],
                     extra={"model": config.to_dict()})
    written = save_model(tmp_path / "m", card, net.state_dict(), half=True)
    rebuilt, cfg = load_network(written, load_state_dict(tmp_path / "m"))
    assert cfg == config
    assert count_parameters(rebuilt) == count_parameters(net)
    first = next(iter(net.state_dict()))
    assert torch.allclose(rebuilt.state_dict()[first], net.state_dict()[first], atol=1e-2)
    # a card describing another network is refused with a message
    card.extra = {"model": tiny("tubules").to_dict()}
    with pytest.raises(ModelError, match="do not fit"):
        load_network(card, load_state_dict(tmp_path / "m"))

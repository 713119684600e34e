"""Grad-CAM maths, target-layer detection and the map geometry, on small random networks."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from monai.visualize import GradCAM as MonaiGradCAM
from monai.visualize import GradCAMpp as MonaiGradCAMpp

from xraytriage.errors import ConfigError
from xraytriage.explain.cam import GradCAM
from xraytriage.explain.layers import find_target_layer, last_spatial_layer
from xraytriage.geometry import map_to_original
from xraytriage.models import ModelConfig, build_model
from xraytriage.preprocess import PreprocessContract

FAMILIES = {
    "densenet121": ("class_layers.relu", "features.denseblock2"),
    "resnet10": ("layer4", "layer2"),
    "seresnet50": ("layer4", "layer2"),
    "efficientnet-b0": ("_bn1", "_bn1"),
    "vgg_like": ("features.33", "features.26"),
}


def _net(backbone: str, classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(backbone=backbone, num_classes=classes, width=0.25)).eval()


@pytest.mark.parametrize("backbone", sorted(FAMILIES))
def test_layer_detection_per_family(backbone):
    net = _net(backbone)
    standard, small = FAMILIES[backbone]
    assert find_target_layer(net, backbone) == standard
    # At 64 px the standard layer's map is too coarse (< 7 cells), so a stage earlier is chosen.
    assert find_target_layer(net, backbone, input_size=64) == small
    cam = GradCAM(net, find_target_layer(net, backbone, input_size=64))
    _, maps = cam(torch.randn(1, 1, 64, 64), [0])
    assert maps.shape[0] == 1 and maps.shape[1] == 1 and maps.shape[-1] >= 2


def test_standard_layer_kept_at_standard_input_size():
    net = _net("resnet10")
    assert find_target_layer(net, "resnet10", input_size=224) == "layer4"  # a 7 x 7 map


def test_layer_override_and_unknown_name():
    net = _net("resnet10")
    assert find_target_layer(net, "resnet10", override="layer3") == "layer3"
    with pytest.raises(ConfigError, match="not found"):
        find_target_layer(net, "resnet10", override="layer9")


def test_unknown_network_falls_back_to_last_spatial_layer():
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 2),
    )
    assert last_spatial_layer(net) == "1"
    assert find_target_layer(net, "something-else") == "1"


@pytest.mark.parametrize(
    ("backbone", "method"),
    [
        ("densenet121", "gradcam"),
        ("resnet10", "gradcam"),
        ("resnet10", "gradcam++"),
        ("vgg_like", "gradcam++"),
    ],
)
@pytest.mark.slow
def test_batched_maps_equal_monai_class_by_class(backbone, method):
    net = _net(backbone, classes=4)
    layer = find_target_layer(net, backbone, input_size=64)
    x = torch.randn(1, 1, 64, 64)
    _, ours = GradCAM(copy.deepcopy(net), layer, method)(x, [0, 1, 2, 3])
    reference_cls = MonaiGradCAM if method == "gradcam" else MonaiGradCAMpp
    assert float(ours.abs().sum()) > 0, "all maps zero: the comparison would prove nothing"
    for c in range(4):
        ref = reference_cls(copy.deepcopy(net), layer).compute_map(x, class_idx=c)[0, 0]
        if method == "gradcam":
            torch.testing.assert_close(ours[0, c], ref, rtol=1e-4, atol=1e-6)
        else:  # MONAI's exp(score) factor cancels after normalisation
            norm = lambda m: m / m.max().clamp_min(1e-12)  # noqa: E731
            torch.testing.assert_close(norm(ours[0, c]), norm(ref), rtol=1e-4, atol=1e-5)


def test_k_findings_cost_one_forward_and_equal_separate_runs():
    net = _net("vgg_like", classes=5)
    cam = GradCAM(copy.deepcopy(net), "features.26")
    calls = []
    cam.model.features[0].register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(2, 1, 64, 64)
    logits, together = cam(x, [4, 1, 2])
    assert len(calls) == 1  # one forward pass for 3 classes and 2 images
    for j, c in enumerate([4, 1, 2]):
        _, alone = cam(x, [c])
        torch.testing.assert_close(together[:, j], alone[:, 0])
        for i in range(2):  # and each image of the batch equals that image on its own
            _, single = cam(x[i : i + 1], [c])
            torch.testing.assert_close(together[i, j], single[0, 0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(logits, net(x))


def _hot_cell_map(row: int, col: int, cells: int = 8) -> np.ndarray:
    grid = np.zeros((cells, cells), np.float32)
    grid[row, col] = 1.0
    return grid


def _peak(heat: np.ndarray) -> tuple[int, int]:
    return tuple(int(v) for v in np.unravel_index(np.argmax(heat), heat.shape))


def test_geometry_squash_maps_cells_to_their_region():
    contract = PreprocessContract(size=64, resize="squash")
    heat = map_to_original(_hot_cell_map(1, 6), contract, 200, 100)
    assert heat.shape == (200, 100) and heat.max() == pytest.approx(1.0)
    row, col = _peak(heat)
    assert 25 <= row <= 50 and 75 <= col <= 87  # cell (1, 6) of 8 covers rows 25-50, cols 75-87


def test_geometry_letterbox_ignores_padding():
    contract = PreprocessContract(size=64, resize="letterbox")
    # A 100 x 200 (h x w) image fills input rows 16..48; cell row 2 (input rows 16-24) is its top.
    heat = map_to_original(_hot_cell_map(2, 0), contract, 100, 200)
    row, col = _peak(heat)
    assert row < 25 and col < 25


def test_geometry_center_crop_zeroes_what_the_network_never_saw():
    contract = PreprocessContract(size=64, resize="center_crop")
    heat = map_to_original(np.ones((8, 8), np.float32), contract, 100, 200)
    # The crop keeps the middle 100 columns of 200: the side bands were never seen.
    assert heat[:, :45].max() == 0 and heat[:, 155:].max() == 0 and heat[:, 60:140].min() > 0.9


def test_geometry_all_zero_map_stays_zero():
    heat = map_to_original(np.zeros((4, 4), np.float32), PreprocessContract(size=32), 50, 40)
    assert heat.shape == (50, 40) and heat.max() == 0

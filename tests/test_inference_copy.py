"""BatchNorm folding for inference: same outputs, the original model untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from laworder.models import create_model
from laworder.models.inference import fold_batchnorm_, inference_copy

LIGHT = ["order", "mk_unet", "order_se", "order_cbam", "ege_unet", "nnunet2d"]


def _trained_looking(model: nn.Module) -> nn.Module:
    """Give every BN non-trivial statistics and affine parameters, as after training."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for norm in model.modules():
            if isinstance(norm, nn.BatchNorm2d):
                n = norm.num_features
                norm.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                norm.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                norm.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                norm.bias.copy_(torch.rand(n, generator=generator) - 0.5)
    return model.eval()


@pytest.mark.parametrize("name", LIGHT)
def test_inference_copy_matches_eval_model(name: str) -> None:
    torch.manual_seed(0)
    model = _trained_looking(create_model(name))
    keys = list(model.state_dict())
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
        got = inference_copy(model)(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert list(model.state_dict()) == keys  # the original keeps its BN layers
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == norms


@pytest.mark.parametrize("name", ["order", "mk_unet"])
def test_mk_unet_family_loses_its_batchnorms(name: str) -> None:
    prepared = inference_copy(_trained_looking(create_model(name)))
    remaining = [m for m in prepared.modules() if isinstance(m, nn.BatchNorm2d)]
    total = sum(isinstance(m, nn.BatchNorm2d) for m in create_model(name).modules())
    assert total > 40 and len(remaining) < total // 10, (len(remaining), total)
    convs = [m for m in prepared.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.weight.shape[1] > 1]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)


def test_fold_needs_eval_mode() -> None:
    model = create_model("mk_unet").train()
    with pytest.raises(ValueError, match="eval-mode"):
        fold_batchnorm_(model)


def test_bn_without_running_stats_is_left_alone() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, track_running_stats=False)).eval()
    assert fold_batchnorm_(model) == 0
    assert isinstance(model[1], nn.BatchNorm2d)

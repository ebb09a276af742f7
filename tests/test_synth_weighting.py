"""Weighting objectives: LAW equations, ablation switches, gradients, degenerate masks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from laworder.errors import ConfigError, DataError
from laworder.synth.weighting import OBJECTIVES, create_objective, mask_at_prediction_resolution, ratio_prior
from laworder.synth.weighting.law import LawObjective, soft_dice_loss



ALL = ["uniform", "fixed", "ratio", "law", "adaptive_distillation", "noise_consistency"]


def make_masks(batch: int = 3, size: int = 16) -> torch.Tensor:
    masks = torch.zeros(batch, 1, size, size)
    masks[0, :, 2:6, 3:9] = 1
    masks[1, :, 8:, 8:] = 1
    masks[2 % batch, :, 5, 5] = 1
    return masks


def randomise_phi(objective: LawObjective, seed: int = 0) -> LawObjective:
    """φ starts with a zero last layer (δ = 0.5); give it weights so δ varies per pixel."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in objective.phi.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return objective


def extras(objective, like: torch.Tensor) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return {key: torch.randn(like.shape, generator=generator) for key in objective.needs}


def test_registry_has_every_objective_and_unknown_names_list_them():
    assert set(ALL) <= set(OBJECTIVES.names())
    with pytest.raises(ConfigError, match="known objectives: .*law"):
        create_objective("nope")


def test_ratio_prior_matches_eq3_and_falls_back_to_uniform_for_empty_and_full_masks():
    masks = torch.zeros(3, 1, 4, 4)
    masks[0, :, 0, :2] = 1  # r = 2/16
    masks[2] = 1
    prior = ratio_prior(masks)
    r = 2 / 16
    assert torch.allclose(prior[0, 0, 0, :2], torch.full((2,), 1 - r))
    assert torch.allclose(prior[0, 0, 1:], torch.full((3, 4), r))
    assert torch.equal(prior[1], torch.ones(1, 4, 4))
    assert torch.equal(prior[2], torch.ones(1, 4, 4))


def test_law_weights_have_unit_mean_before_clamp():
    objective = randomise_phi(LawObjective(channels=3))
    eps_pred = torch.randn(3, 3, 16, 16)
    maps = objective.weight_maps(eps_pred, make_masks())
    means = maps["w_normalised"].mean(dim=(2, 3))
    assert torch.allclose(means, torch.ones_like(means), atol=1e-5)
    assert maps["delta"].std() > 0.01  # δ really varies, so the check is not trivial


def test_law_clamps_hold():
    # normalised ratio weights are 1/(2r) on lesion and 1/(2(1−r)) ≥ 0.5 on background (× μ),
    # so a one-pixel lesion exceeds any max bound and 0.55 cuts into the background
    objective = randomise_phi(LawObjective(channels=3, w_min=0.55, w_max=1.5))
    masks = torch.zeros(2, 1, 16, 16)
    masks[:, :, 4, 4] = 1  # one lesion pixel: normalised lesion weight ≈ 128 before clamping
    maps = objective.weight_maps(torch.randn(2, 3, 16, 16), masks)
    assert maps["w_normalised"].max() > 1.5 and maps["w_normalised"].min() < 0.55
    assert maps["w_final"].max() <= 1.5 + 1e-7
    assert maps["w_final"].min() >= 0.55 - 1e-7


def test_law_loss_is_eq8_plus_dice_eq9():
    objective = randomise_phi(LawObjective(channels=3, lambda_dice=0.7))
    eps_pred, eps, masks = torch.randn(3, 3, 16, 16), torch.randn(3, 3, 16, 16), make_masks()
    maps = objective.weight_maps(eps_pred, masks)
    expected = (maps["w_final"] * (eps_pred - eps) ** 2).mean() + 0.7 * soft_dice_loss(maps["delta"], masks)
    assert torch.allclose(objective(eps_pred, eps, masks).loss, expected)
    delta, mask = maps["delta"][0], masks[0]
    dice_0 = 1 - (2 * (delta * mask).sum() + 1e-6) / (delta.sum() + mask.sum() + 1e-6)
    assert torch.isclose(soft_dice_loss(maps["delta"][:1], masks[:1]), dice_0)


def test_eps_pred_enters_phi_detached():
    """The denoiser's gradient is that of mean(w_final ⊙ (ε̂ − ε)²) with w_final held fixed."""
    objective = randomise_phi(LawObjective(channels=3))
    eps, masks = torch.randn(3, 3, 16, 16), make_masks()
    eps_pred = torch.randn(3, 3, 16, 16, requires_grad=True)
    objective(eps_pred, eps, masks).loss.backward()
    w_final = objective.weight_maps(eps_pred.detach(), masks)["w_final"]
    expected = 2 * w_final * (eps_pred.detach() - eps) / eps_pred.numel()
    assert torch.allclose(eps_pred.grad, expected, atol=1e-7)


def phi_grad_norm(objective: LawObjective, eps_pred, eps, masks) -> float:
    objective.zero_grad(set_to_none=True)
    objective(eps_pred.clone().requires_grad_(), eps, masks).loss.backward()
    return sum(float(p.grad.abs().sum()) for p in objective.phi.parameters() if p.grad is not None)


def test_phi_gets_gradient_only_through_dice_and_w_final():
    eps_pred, eps, masks = torch.randn(3, 3, 16, 16), torch.randn(3, 3, 16, 16), make_masks()
    # Dice alone: with ε̂ = ε the denoising term and its gradient vanish
    assert phi_grad_norm(randomise_phi(LawObjective(channels=3)), eps, eps, masks) > 0
    # L_S alone reaches φ through w_final (eq. 8 has no stop-gradient) ...
    assert phi_grad_norm(randomise_phi(LawObjective(channels=3, dice=False)), eps_pred, eps, masks) > 0
    # ... and not when that path is switched off: then nothing trains φ without Dice
    detached = randomise_phi(LawObjective(channels=3, dice=False, weight_gradient=False))
    assert phi_grad_norm(detached, eps_pred, eps, masks) == 0


def test_phi_starts_neutral():
    objective = LawObjective(channels=3)
    maps = objective.weight_maps(torch.randn(2, 3, 8, 8), make_masks(2, 8))
    assert torch.allclose(maps["delta"], torch.full_like(maps["delta"], 0.5))


@pytest.mark.parametrize("switch", ["normalise", "clamp_min", "clamp_max", "dice", "use_delta"])
def test_each_ablation_switch_changes_exactly_its_term(switch):
    eps_pred, eps = torch.randn(3, 3, 16, 16), torch.randn(3, 3, 16, 16)
    masks = make_masks()
    full = randomise_phi(LawObjective(channels=3, w_min=0.55, w_max=1.5))
    ablated = LawObjective(channels=3, w_min=0.55, w_max=1.5, **{switch: False})
    if ablated.phi is not None:
        ablated.phi.load_state_dict(full.phi.state_dict())
    a, b = full.weight_maps(eps_pred, masks), ablated.weight_maps(eps_pred, masks)
    loss_a, loss_b = full(eps_pred, eps, masks), ablated(eps_pred, eps, masks)
    dice = soft_dice_loss(a["delta"], masks)
    if switch == "dice":
        assert torch.equal(a["w_final"], b["w_final"])
        assert torch.isclose(loss_a.loss - loss_b.loss, dice)
    elif switch == "normalise":
        assert torch.equal(a["delta"], b["delta"])
        assert torch.equal(b["w_final"], b["w_adapt"].clamp(0.55, 1.5))
        assert not torch.equal(a["w_final"], b["w_final"])
        assert loss_b.logs["loss_dice"] == loss_a.logs["loss_dice"]
    elif switch in ("clamp_min", "clamp_max"):
        assert torch.equal(a["w_normalised"], b["w_normalised"])
        bound_hit = a["w_normalised"] < 0.55 if switch == "clamp_min" else a["w_normalised"] > 1.5
        assert bound_hit.any()
        assert torch.equal(a["w_final"][~bound_hit], b["w_final"][~bound_hit])
        assert torch.equal(b["w_final"][bound_hit], a["w_normalised"][bound_hit])
        assert loss_b.logs["loss_dice"] == loss_a.logs["loss_dice"]
    else:  # no delta map: μ = 1, so no φ and no Dice on δ
        assert ablated.phi is None and "delta" not in b
        reference = LawObjective(channels=3, w_min=0.55, w_max=1.5, use_delta=False)
        ratio = ratio_prior(masks)
        assert torch.allclose(b["w_final"], (ratio / ratio.mean(dim=(2, 3), keepdim=True)).clamp(0.55, 1.5))
        assert "loss_dice" not in loss_b.logs and reference(eps_pred, eps, masks).loss == loss_b.loss


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("kind", ["empty", "full", "one_pixel"])
def test_degenerate_masks_give_finite_loss_and_gradients(name, kind):
    masks = torch.zeros(2, 1, 16, 16)
    if kind == "full":
        masks[:] = 1
    elif kind == "one_pixel":
        masks[:, :, 7, 7] = 1
    objective = create_objective(name, channels=3)
    eps_pred = torch.randn(2, 3, 16, 16, requires_grad=True)
    output = objective(eps_pred, torch.randn(2, 3, 16, 16), masks, **extras(objective, eps_pred))
    output.loss.backward()
    assert torch.isfinite(output.loss)
    assert torch.isfinite(eps_pred.grad).all()
    assert all(math.isfinite(v) for v in output.logs.values())
    for value in output.maps.values():
        assert torch.isfinite(value).all()
    if kind != "one_pixel" and "w_ratio" in output.maps:
        assert torch.equal(output.maps["w_ratio"], torch.ones_like(output.maps["w_ratio"]))


def test_mask_is_resized_nearest_to_prediction_resolution():
    generator = torch.Generator().manual_seed(0)
    masks = (torch.rand(2, 1, 64, 64, generator=generator) > 0.7).float()
    eps_pred = torch.randn(2, 4, 16, 16)
    resized = mask_at_prediction_resolution(masks, eps_pred)
    assert resized.shape == (2, 1, 16, 16)
    assert torch.equal(resized, masks[:, :, ::4, ::4])  # nearest picks one source pixel, no blending
    assert torch.equal(resized, F.interpolate(masks, size=(16, 16), mode="nearest"))
    objective = randomise_phi(LawObjective(channels=4))
    eps = torch.randn(2, 4, 16, 16)
    assert torch.equal(objective(eps_pred, eps, masks).loss, objective(eps_pred, eps, resized).loss)


def test_multichannel_mask_is_reduced_to_one_channel():
    masks = torch.zeros(1, 3, 8, 8)
    masks[0, 1, 2, 2] = 1
    assert mask_at_prediction_resolution(masks, torch.zeros(1, 3, 8, 8)).sum() == 1


def test_non_binary_mask_is_rejected_with_its_values():
    masks = torch.zeros(1, 1, 8, 8)
    masks[0, 0, 0, 0] = 0.5
    with pytest.raises(DataError, match="0.5"):
        create_objective("law", channels=3)(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), masks)


def test_shape_mismatches_name_both_shapes():
    objective = create_objective("uniform")
    with pytest.raises(ValueError, match=r"\(2, 3, 8, 8\).*\(2, 3, 4, 4\)"):
        objective(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 8, 8), torch.zeros(2, 1, 8, 8))
    with pytest.raises(DataError, match="batch"):
        objective(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8), torch.zeros(3, 1, 8, 8))
    with pytest.raises(ValueError, match="eps_teacher"):
        create_objective("adaptive_distillation")(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 4, 4))


def test_weights_broadcast_over_channels_and_ratio_is_not_renormalised():
    eps_pred, eps, masks = torch.randn(3, 3, 16, 16), torch.randn(3, 3, 16, 16), make_masks()
    w = ratio_prior(masks)
    l1 = create_objective("ratio")(eps_pred, eps, masks).loss
    assert torch.allclose(l1, (w.expand(-1, 3, -1, -1) * (eps_pred - eps).abs()).mean())
    l2 = create_objective("ratio", norm="l2")(eps_pred, eps, masks).loss
    assert torch.allclose(l2, (w * (eps_pred - eps) ** 2).mean())
    with pytest.raises(ValueError, match="norm"):
        create_objective("ratio", norm="l3")


def test_fixed_weights_lesion_pixels():
    eps_pred, eps, masks = torch.randn(3, 3, 16, 16), torch.randn(3, 3, 16, 16), make_masks()
    loss = create_objective("fixed")(eps_pred, eps, masks).loss
    assert torch.allclose(loss, ((1 + 99 * masks) * (eps_pred - eps) ** 2).mean())


def test_uniform_is_plain_mse():
    eps_pred, eps = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    loss = create_objective("uniform")(eps_pred, eps, torch.zeros(2, 1, 8, 8)).loss
    assert torch.allclose(loss, F.mse_loss(eps_pred, eps))


def test_adaptive_distillation_eq10_12_and_teacher_is_a_fixed_target_for_distillation():
    eps, masks = torch.randn(3, 3, 16, 16), make_masks()
    student = torch.randn(3, 3, 16, 16, requires_grad=True)
    teacher = torch.randn(3, 3, 16, 16, requires_grad=True)
    loss = create_objective("adaptive_distillation")(student, eps, masks, eps_teacher=teacher).loss
    w = ratio_prior(masks)
    expected = (F.mse_loss(student, eps) + 0.05 * F.mse_loss(teacher, eps)
                + 0.05 * (w * (student - teacher.detach()) ** 2).mean())
    assert torch.allclose(loss, expected)
    loss.backward()
    # the teacher learns from L_T only (eq. 10), not from the distillation term
    assert torch.allclose(teacher.grad, 0.05 * 2 * (teacher - eps).detach() / teacher.numel(), atol=1e-8)


def test_noise_consistency_eq6_9_anchors_on_the_image_branch():
    eps, masks = torch.randn(2, 3, 8, 8), torch.zeros(2, 1, 8, 8)
    mask_branch = torch.randn(2, 3, 8, 8, requires_grad=True)
    image_branch = torch.randn(2, 3, 8, 8, requires_grad=True)
    loss = create_objective("noise_consistency")(mask_branch, eps, masks, eps_image=image_branch).loss
    expected = F.mse_loss(mask_branch, eps) + F.mse_loss(image_branch, eps) + F.mse_loss(mask_branch, image_branch.detach())
    assert torch.allclose(loss, expected)
    loss.backward()
    assert torch.allclose(image_branch.grad, 2 * (image_branch - eps).detach() / eps.numel(), atol=1e-8)
    objective = create_objective("noise_consistency")
    assert objective.image_control_weight(25, 100) == 0.25
    assert objective.image_control_weight(None, 100) == 1.0


@pytest.mark.parametrize("kwargs", [dict(tau=0), dict(gamma=1.0), dict(w_min=2.0, w_max=1.0), dict(lambda_dice=-1)])
def test_law_rejects_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError):
        LawObjective(channels=3, **kwargs)


def test_only_law_has_parameters():
    assert [name for name in ALL if create_objective(name, channels=3).has_parameters] == ["law"]
    assert not create_objective("law", channels=3, use_delta=False).has_parameters


# --- objective_kwargs.latent_mask: how the mask reaches the prediction resolution ------------------
def test_latent_mask_default_is_nearest_bit_for_bit():
    generator = torch.Generator().manual_seed(3)
    masks = (torch.rand(2, 1, 64, 64, generator=generator) > 0.6).float()
    eps_pred, eps = torch.randn(2, 4, 16, 16, generator=generator), torch.randn(2, 4, 16, 16, generator=generator)
    default = randomise_phi(create_objective("law", channels=4))
    nearest = randomise_phi(create_objective("law", channels=4, latent_mask="nearest"))
    assert default.latent_mask == "nearest"
    a, b = default(eps_pred, eps, masks), nearest(eps_pred, eps, masks)
    assert torch.equal(a.loss, b.loss) and a.logs == b.logs
    # the reference: the resize the objectives always did (top-left pixel of each 4×4 block)
    reference = randomise_phi(LawObjective(channels=4))
    assert torch.equal(reference(eps_pred, eps, F.interpolate(masks, size=(16, 16), mode="nearest")).loss, a.loss)


def test_latent_mask_area_is_the_lesion_fraction_per_cell_and_every_objective_takes_it():
    masks = torch.zeros(1, 1, 8, 8)
    masks[0, 0, 0, 0] = 1  # 1 of the 4 pixels of cell (0, 0)
    masks[0, 0, 2:4, 2:4] = 1  # all of cell (1, 1)
    masks[0, 0, 4, 6:8] = 1  # half of cell (2, 3)
    eps_pred = torch.zeros(1, 3, 4, 4)
    soft = mask_at_prediction_resolution(masks, eps_pred, "area")
    expected = torch.zeros(1, 1, 4, 4)
    expected[0, 0, 0, 0], expected[0, 0, 1, 1], expected[0, 0, 2, 3] = 0.25, 1.0, 0.5
    assert torch.equal(soft, expected)
    assert float(soft.mean()) == float(masks.mean())  # r, the lesion ratio, is exact
    generator = torch.Generator().manual_seed(0)
    big = (torch.rand(2, 1, 64, 64, generator=generator) > 0.7).float()
    pred, target = torch.randn(2, 4, 16, 16, generator=generator), torch.randn(2, 4, 16, 16, generator=generator)
    for name in ALL:
        objective = create_objective(name, channels=4, latent_mask="area")
        if name == "law":
            randomise_phi(objective)
        output = objective(pred, target, big, **extras(objective, pred))
        assert torch.isfinite(output.loss) and all(math.isfinite(v) for v in output.logs.values()), name
    # the ratio prior on the soft mask is eq. 3 with m in [0, 1] and r the exact lesion fraction
    ratio = create_objective("ratio", norm="l2", latent_mask="area")(pred, target, big)
    m = F.avg_pool2d(big, 4)
    assert torch.allclose(ratio.maps["w_ratio"], ratio_prior(m))
    assert torch.allclose(lesion_ratio_of(m), lesion_ratio_of(big))
    # LAW: φ sees the soft mask, the Dice term is the soft Dice against it, the lesion logs weight by m
    law = randomise_phi(create_objective("law", channels=4, latent_mask="area"))
    output = law(pred, target, big)
    delta = torch.sigmoid(law.phi(pred, m) / law.tau)
    assert torch.allclose(output.maps["delta"], delta)
    assert output.logs["loss_dice"] == pytest.approx(float(soft_dice_loss(delta, m, law.dice_smooth).detach()), rel=1e-5)
    w = output.maps["w_final"]
    assert output.logs["w_final_lesion"] == pytest.approx(float((w * m).sum() / m.sum()), rel=1e-5)
    assert 0.0 <= output.logs["w_at_max_lesion"] <= 1.0


def lesion_ratio_of(masks: torch.Tensor) -> torch.Tensor:
    return masks.mean(dim=(1, 2, 3))


def test_latent_mask_center_picks_each_cells_centre_pixel():
    masks = torch.zeros(1, 1, 8, 8)
    masks[0, 0, 0, 0] = 1  # the top-left pixel: what nearest takes, not the centre
    masks[0, 0, 2, 2] = 1  # the centre pixel (2, 2) of the 4×4 cell (0, 0) at ×4
    masks[0, 0, 6, 2] = 1  # centre of cell (1, 0)
    eps_pred = torch.zeros(1, 3, 2, 2)
    center = mask_at_prediction_resolution(masks, eps_pred, "center")
    assert center.tolist() == [[[[1.0, 0.0], [1.0, 0.0]]]]
    assert torch.equal(center, masks[:, :, 2::4, 2::4])  # pixel floor((i + ½)·4) = 4i + 2
    assert mask_at_prediction_resolution(masks, eps_pred).tolist() == [[[[1.0, 0.0], [0.0, 0.0]]]]


@pytest.mark.parametrize("bad", ["bilinear", "", 3, None])
def test_a_bad_latent_mask_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="latent_mask must be one of"):
        create_objective("law", channels=3, latent_mask=bad)


def test_law_logs_the_clamps_share_of_the_lesion():
    masks = make_masks(size=16)
    objective = randomise_phi(LawObjective(channels=3, w_max=1.05))
    pred, target = torch.randn(3, 3, 16, 16), torch.randn(3, 3, 16, 16)
    output = objective(pred, target, masks)
    maps = objective.weight_maps(pred, masks)
    expected = float(((maps["w_normalised"] >= 1.05).float() * masks).sum() / masks.sum())
    assert output.logs["w_at_max_lesion"] == pytest.approx(expected) and expected > 0
    assert LawObjective(channels=3, clamp_max=False)(pred, target, masks).logs["w_at_max_lesion"] == 0.0

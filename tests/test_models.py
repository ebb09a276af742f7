"""Segmenters: registry, shapes, parameter/FLOP budgets of the paper, ORDER's attention and gates,
ONNX export, DDP readiness."""

from __future__ import annotations

import io
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from laworder.errors import ConfigError
from laworder.models import create_model, list_models
from laworder.models.ege_unet import EGEUNet
from laworder.models.flops import conv_linear_flops, count_parameters, full_flops
from laworder.models.mk_unet import GAGFusion
from laworder.models.skip_attention import BidirectionalSkipAttention
from laworder.models.skip_controls import CBAMSkip, SqueezeExcitationSkip

ALL_MODELS = ["ege_unet", "ege_unet_wide", "mk_unet", "order", "order_cbam", "order_se"]
SMALL_MODELS = ["ege_unet", "mk_unet", "order", "order_cbam", "order_se"]


def _randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Eval-mode model with well-conditioned random weights in which every branch matters.

    The real init (convs N(0, 0.02), zero output projections, fresh BN statistics) gives a
    near-constant eval output; BN statistics estimated from a few images then amplify float32
    rounding to ~1e-4. Kaiming convs and moderate BN statistics keep rounding near 1e-6.
    """
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.normal_(module.bias, std=0.1)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.running_mean, std=0.1)
            nn.init.uniform_(module.running_var, 0.5, 1.5)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.normal_(module.bias, std=0.1)
    return model.eval()




def _attention_modules(model: nn.Module) -> list[BidirectionalSkipAttention]:
    return [m for m in model.modules() if isinstance(m, BidirectionalSkipAttention)]


# --- registry ---------------------------------------------------------------------------------


def test_registry_lists_every_segmenter():
    assert set(ALL_MODELS) <= set(list_models())
    assert list_models() == sorted(list_models())


def test_unknown_model_error_lists_known_names():
    with pytest.raises(ConfigError) as info:
        create_model("unet_of_dreams")
    message = str(info.value)
    assert "unet_of_dreams" in message
    for name in ALL_MODELS:
        assert name in message


# --- sizes and shapes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [
        ("mk_unet", 24_000, 30_000),
        ("order", 38_000, 46_000),
        ("order_se", 26_000, 28_000),
        ("order_cbam", 26_000, 28_000),
        ("ege_unet", 52_000, 55_000),
        ("ege_unet_wide", 480_000, 540_000),
    ],
)
def test_parameter_counts_match_the_paper(name, low, high):
    assert low <= count_parameters(create_model(name)) <= high


def test_mk_unet_with_reference_heads_has_exactly_the_reference_parameter_count():
    # The public MK_UNet_T builds four heads (27,384 params) but returns only the final one.
    assert count_parameters(create_model("mk_unet", deep_supervision=True)) == 27_384
    assert count_parameters(create_model("mk_unet")) == 27_384 - (17 + 9 + 5)


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_forward_gives_logits_and_every_parameter_a_gradient(name):
    # DistributedDataParallel without find_unused_parameters needs every parameter in the graph.
    model = create_model(name, in_channels=1, num_classes=2)
    out = model(torch.rand(2, 1, 32, 64))
    assert out.shape == (2, 2, 32, 64)
    assert torch.isfinite(out).all()
    out.mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("name", ["mk_unet", "order", "ege_unet"])
def test_size_not_divisible_by_32_raises_with_nearest_valid_size(name):
    model = create_model(name)
    with pytest.raises(ValueError) as info:
        model(torch.rand(1, 3, 250, 70))
    message = str(info.value)
    assert "(1, 3, 250, 70)" in message and "256x64" in message


def test_wrong_channel_count_raises():
    with pytest.raises(ValueError, match="expected 3 input channels"):
        create_model("order")(torch.rand(1, 1, 64, 64))


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_batch_output_equals_per_sample_outputs_in_eval(name):
    model = _randomised(create_model(name))
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        batched = model(images)
        single = torch.cat([model(image[None]) for image in images])
    assert batched.std() > 1e-3  # a meaningful comparison, not two constants
    # equal up to float32 rounding, which scales with the logits (EGE-UNet's reach ~20)
    scale = max(1.0, batched.abs().max().item())
    torch.testing.assert_close(batched, single, atol=5e-5 * scale, rtol=1e-4)


def test_deep_supervision_returns_final_map_first():
    images = torch.rand(2, 3, 64, 64)
    mk_outputs = create_model("mk_unet", deep_supervision=True)(images)
    ege_outputs = create_model("ege_unet", deep_supervision=True)(images)
    assert len(mk_outputs) == 4 and len(ege_outputs) == 6
    assert all(out.shape == (2, 1, 64, 64) for out in mk_outputs + ege_outputs)


# --- ORDER -------------------------------------------------------------------------------------


def test_order_skip_subsets_build_and_grow_like_table_10():
    counts = {
        indices: count_parameters(create_model("order", skip_indices=indices))
        for indices in [(), (3, 2), (2, 1), (0, 1), (0, 1, 2, 3)]
    }
    assert counts[()] == count_parameters(create_model("mk_unet"))
    assert counts[()] < counts[(3, 2)] < counts[(2, 1)] < counts[(0, 1)] < counts[(0, 1, 2, 3)]
    assert 34_000 <= counts[(2, 1)] <= 38_000  # Table 10: 36K
    assert 45_000 <= counts[(0, 1, 2, 3)] <= 49_000  # Table 10: 47K
    for indices in [(2, 1), (0, 1, 2, 3)]:
        assert create_model("order", skip_indices=indices)(torch.rand(1, 3, 64, 64)).shape == (1, 1, 64, 64)


def test_order_attention_sits_on_the_chosen_skips_and_gag_elsewhere():
    model = create_model("order", skip_indices=(2, 1))
    kinds = [type(fusion) for fusion in model.skip_fusion]
    assert kinds == [GAGFusion, BidirectionalSkipAttention, BidirectionalSkipAttention, GAGFusion]
    # index 0 is the deepest skip: 24 channels at H/16; index 1 the 16-channel one at H/8
    assert create_model("order").skip_fusion[0].norm_skip.weight.numel() == 24
    assert create_model("order").skip_fusion[1].norm_skip.weight.numel() == 16


@pytest.mark.parametrize("indices", [(4,), (0, 0), (-1,)])
def test_order_rejects_invalid_skip_indices(indices):
    with pytest.raises(ConfigError, match="skip_indices"):
        create_model("order", skip_indices=indices)


def test_order_gates_are_per_sample_detached_and_in_unit_interval():
    model = _randomised(create_model("order"))
    assert model.gate_values == {}  # nothing before the first forward
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        model(images)
    gates = model.gate_values
    assert gates.keys() == {0, 1}
    for values in gates.values():
        assert values.shape == (3,)
        assert not values.requires_grad
        assert ((values > 0) & (values < 1)).all()
    assert gates[0].unique().numel() > 1  # one scalar per sample, not one per batch
    with torch.no_grad():
        model(images[1:2])
    torch.testing.assert_close(model.gate_values[0], gates[0][1:2])


def _reference_bidirectional(module: BidirectionalSkipAttention, d: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Eq. 12-17 written literally, per head, with einsum."""
    heads, width = module.num_heads, module.head_dim
    batch, channels, height, wid = d.shape

    def rms(x, weight):
        return x / torch.sqrt(x.pow(2).mean(1, keepdim=True) + 1e-6) * weight[None, :, None, None]

    def tokens(x):  # B×(h·dh)×H×W -> B×h×N×dh
        return x.flatten(2).reshape(batch, heads, width, -1).permute(0, 1, 3, 2)

    q, vd = [tokens(t) for t in module.decoder_qv(rms(d, module.norm_decoder.weight)).split(heads * width, 1)]
    k, ve = [tokens(t) for t in module.skip_kv(rms(e, module.norm_skip.weight)).split(heads * width, 1)]
    s = torch.einsum("bhnd,bhmd->bhnm", q, k) / math.sqrt(width)
    r_d = torch.einsum("bhnm,bhmd->bhnd", s.softmax(-1), ve)
    r_e = torch.einsum("bhmn,bhnd->bhmd", s.transpose(-2, -1).softmax(-1), vd)

    def feature_map(r):
        return r.permute(0, 1, 3, 2).reshape(batch, heads * width, height, wid)

    gap = torch.cat([e.mean((2, 3)), d.mean((2, 3))], 1)
    c = torch.sigmoid(module.gate.expand(F.relu(module.gate.reduce(gap[..., None, None]))))
    d_new = d + c * module.proj_decoder(feature_map(r_d))
    e_new = e + c * module.proj_skip(feature_map(r_e))
    return d_new + e_new


def test_bidirectional_attention_follows_equations_12_to_17():
    torch.manual_seed(0)
    module = BidirectionalSkipAttention(16, num_heads=2, head_dim=32)
    for conv in (module.proj_decoder, module.proj_skip):
        nn.init.normal_(conv.weight, std=0.2)
    d, e = torch.randn(2, 16, 4, 6), torch.randn(2, 16, 4, 6)
    torch.testing.assert_close(module(d, e), _reference_bidirectional(module, d, e), atol=1e-5, rtol=1e-4)


def test_zero_initialised_projections_start_at_the_additive_skip():
    module = BidirectionalSkipAttention(24)
    d, e = torch.randn(2, 24, 4, 4), torch.randn(2, 24, 4, 4)
    torch.testing.assert_close(module(d, e), d + e)


def test_gradient_reaches_every_attention_parameter():
    torch.manual_seed(0)
    model = create_model("order")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    images, masks = torch.rand(2, 3, 64, 64), (torch.rand(2, 1, 64, 64) > 0.7).float()
    reached: dict[str, torch.Tensor] = {}
    for step in range(4):  # the zero-init output projections open the Q/K/V path after one update
        optimizer.zero_grad()
        F.binary_cross_entropy_with_logits(model(images), masks).backward()
        optimizer.step()
        # summed over the steps after the first: the gate's few ReLU units (C/4) can all be off
        # for a 2-image batch at one step, which zeroes that step's gate.reduce gradient
        for index, module in enumerate(_attention_modules(model)):
            for name, param in module.named_parameters():
                if step and param.grad is not None:
                    key = f"{index}.{name}"
                    reached[key] = reached.get(key, 0) + param.grad.abs().sum()
    for index, module in enumerate(_attention_modules(model)):
        for name, _ in module.named_parameters():
            assert reached.get(f"{index}.{name}", 0) > 0, name


def test_order_trains_under_ddp_without_unused_parameters(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this test session")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = DistributedDataParallel(create_model("order"))
        for _ in range(2):  # an unused parameter fails on the second iteration
            model(torch.rand(2, 3, 64, 64)).mean().backward()
    finally:
        dist.destroy_process_group()


# --- controls ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "kind"), [("order_se", SqueezeExcitationSkip), ("order_cbam", CBAMSkip)])
def test_attention_controls_replace_gag_on_the_same_skips(name, kind):
    model = create_model(name)
    kinds = [type(fusion) for fusion in model.skip_fusion]
    assert kinds == [kind, kind, GAGFusion, GAGFusion]
    model(torch.rand(1, 3, 64, 64))
    assert model.gate_values == {}
    assert [type(f) for f in create_model(name, skip_indices=(2, 1)).skip_fusion][1:3] == [kind, kind]


def test_unknown_skip_attention_is_rejected():
    from laworder.models.order import ORDER

    with pytest.raises(ConfigError, match="bidirectional"):
        ORDER(skip_attention="transformer")


def test_ege_unet_rejects_widths_not_divisible_by_4():
    with pytest.raises(ConfigError, match="c_list"):
        EGEUNet(c_list=(8, 16, 24, 32, 48, 66))


# --- FLOPs -------------------------------------------------------------------------------------


def test_conv_linear_flops_match_the_paper_at_256():
    order_flops = conv_linear_flops(create_model("order"), (1, 3, 256, 256))
    mk_flops = conv_linear_flops(create_model("mk_unet"), (1, 3, 256, 256))
    assert abs(order_flops - 0.11e9) <= 0.1 * 0.11e9  # ORDER[0,1]: 0.11 G (Tables 7, 8)
    assert abs(mk_flops - 0.10e9) <= 0.1 * 0.10e9  # MK-UNet: 0.10 G; 2 × 0.050 GMACs
    assert order_flops > mk_flops


def test_ege_unet_flops_match_its_authors_and_table_7():
    assert abs(conv_linear_flops(create_model("ege_unet")) - 2 * 0.072e9) <= 0.1 * 2 * 0.072e9
    assert abs(conv_linear_flops(create_model("ege_unet_wide")) - 0.62e9) <= 0.1 * 0.62e9


def test_full_flops_add_the_attention_matmuls():
    model = create_model("order")
    conv_only, full = conv_linear_flops(model), full_flops(model, (1, 3, 256, 256))
    # Two fused SDPA calls of two N×N×32 products each (S is recomputed, not stored), per head,
    # 2 heads, at 1024 tokens (H/8) and 256 tokens (H/16):
    attention = 2 * 4 * 2 * 32 * (1024**2 + 256**2)
    assert full == pytest.approx(conv_only + attention, rel=0.02)
    mk_unet = create_model("mk_unet")  # no matmuls: both conventions agree
    assert full_flops(mk_unet) == conv_linear_flops(mk_unet)


def test_flop_counting_restores_training_mode():
    model = create_model("mk_unet").train()
    conv_linear_flops(model, (1, 3, 64, 64))
    full_flops(model, (1, 3, 64, 64))
    assert model.training


# --- ONNX --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["order", "mk_unet"])
def test_onnx_export_matches_onnxruntime(name):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = _randomised(create_model(name))
    images = torch.rand(2, 3, 64, 64)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model,
            (images,),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        )
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, {"image": images.numpy()})
    with torch.no_grad():
        torch_logits = model(images)
    assert torch_logits.std() > 1e-3
    torch.testing.assert_close(torch.from_numpy(onnx_logits), torch_logits, atol=1e-4, rtol=1e-4)
    (single,) = session.run(None, {"image": images[:1].numpy()})  # the batch axis is dynamic
    torch.testing.assert_close(torch.from_numpy(single), torch_logits[:1], atol=1e-4, rtol=1e-4)


def _explicit_reads(q, k, vd, ve):
    """The pre-SDPA path: one materialised similarity S, softmax along each axis."""
    s = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    return s.softmax(-1) @ ve, s.transpose(-2, -1).softmax(-1) @ vd


@pytest.mark.parametrize("tokens_d, tokens_e", [(64, 64), (48, 80)])
def test_fused_skip_attention_equals_the_explicit_shared_similarity(tokens_d, tokens_e):
    """R_d = SDPA(Q_d, K_e, V_e), R_e = SDPA(K_e, Q_d, V_d): outputs and gradients as explicit S."""
    torch.manual_seed(0)
    module = BidirectionalSkipAttention(16, num_heads=2, head_dim=32)
    shapes = [(3, 2, tokens_d, 32), (3, 2, tokens_e, 32), (3, 2, tokens_d, 32), (3, 2, tokens_e, 32)]
    inputs = [(2 * torch.randn(*shape)).requires_grad_() for shape in shapes]  # peaked softmax
    fused = module._attend(*inputs)
    grads_fused = torch.autograd.grad(sum((r * w).sum() for r, w in zip(fused, (1.0, -0.5))), inputs)
    explicit = _explicit_reads(*inputs)
    grads_explicit = torch.autograd.grad(sum((r * w).sum() for r, w in zip(explicit, (1.0, -0.5))), inputs)
    for a, b in zip((*fused, *grads_fused), (*explicit, *grads_explicit)):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)

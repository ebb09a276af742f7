"""``laworder seg predict``: masks (at each image's own size), overlays and class probabilities.

How an image of any size meets a network trained at ``image_size``² (``--resize``):

* ``squash``: resize to ``image_size``² (aspect ratio distorted) and the logits back; the
  historical default.
* ``pad``: scale the longer side to ``image_size`` keeping the aspect ratio, pad (zeros, centred)
  to a multiple of 32 (the networks downsample five times), crop the logits and scale them back.
* ``sliding``: no rescaling: ``monai.inferers.sliding_window_inference`` with
  ``image_size``² windows, 50 % overlap and Gaussian blending (nnU-Net's inference); an image
  smaller than a window is padded, not refused.

``--tta`` averages the logits over the four flips (none, left-right, up-down, both) as nnU-Net's
mirroring does, inside each window for ``sliding``. Logits (not probabilities) are averaged and
blended, then turned into probabilities once: sigmoid for one output channel, softmax for K.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from laworder import parallel
from laworder.data.io import IMAGE_EXTENSIONS, list_image_files, read_image, write_image, write_mask
from laworder.data.labels import is_multiclass, write_labels
from laworder.errors import ConfigError, DataError
from laworder.seg.runtime import inference_model

RESIZE_MODES = ("squash", "pad", "sliding")
PREDICT_RECORD = "predict.json"
PAD_MULTIPLE = 32
FLIPS: tuple[tuple[int, ...], ...] = ((), (3,), (2,), (2, 3))  # nnU-Net's 2-D mirror set
# Colours of classes 1, 2, ... in overlays (class 1 keeps the binary overlay's orange).
CLASS_COLOURS = ((255, 64, 0), (0, 160, 255), (60, 220, 60), (250, 220, 0), (200, 60, 255), (0, 230, 200),
                 (255, 120, 180), (140, 90, 40))


def list_images(source: str | Path) -> list[Path]:
    """Image files in ``source`` (a folder, a pair folder's ``images/``, or one file)."""
    source = Path(source)
    if source.is_file():
        return [source]
    folder = source / "images" if (source / "images").is_dir() else source
    if not folder.is_dir():
        raise DataError(f"no such image folder or file: {source}")
    files = list_image_files(folder)  # hidden files (macOS ._a.png, .DS_Store) skipped like every scan
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {folder}")
    return files


def overlay(image: np.ndarray, mask: np.ndarray, color=(255, 64, 0), alpha: float = 0.45) -> np.ndarray:
    """Blend a boolean mask onto an ``H×W×3`` uint8 image; the mask border is drawn solid."""
    out = image.astype(np.float32).copy()
    out[mask] = (1 - alpha) * out[mask] + alpha * np.array(color, np.float32)
    inner = mask.copy()
    inner[1:-1, 1:-1] = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    out[mask & ~inner] = color
    return out.clip(0, 255).astype(np.uint8)


def overlay_labels(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Colour overlay of an ``H×W`` label map (0 = background) on an ``H×W×3`` uint8 image."""
    out = image
    for value in (int(v) for v in np.unique(labels) if v > 0):
        out = overlay(out, labels == value, CLASS_COLOURS[(value - 1) % len(CLASS_COLOURS)])
    return out


def _mirrored(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, tta: bool) -> torch.Tensor:
    """Logits of ``images`` (``B×C×H×W``), averaged over the four flips when ``tta``."""
    if not tta:
        return model(images).float()
    total = None
    for dims in FLIPS:
        out = model(images.flip(dims) if dims else images).float()
        out = out.flip(dims) if dims else out
        total = out if total is None else total + out
    return total / len(FLIPS)


def predict_logits(model: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, image_size: int,
                   resize: str = "squash", tta: bool = False, sw_batch_size: int = 4, overlap: float = 0.5) -> torch.Tensor:
    """``1×C×H×W`` image in [0, 1] -> ``1×K×H×W`` logits at the image's own size (see the module doc)."""
    if resize not in RESIZE_MODES:
        raise ConfigError(f"unknown resize mode {resize!r}; choose one of {', '.join(RESIZE_MODES)}")
    height, width = image.shape[-2:]
    if resize == "sliding":
        from monai.inferers import sliding_window_inference

        # MONAI pads an image smaller than the window and crops the result again.
        return sliding_window_inference(image, (image_size, image_size), sw_batch_size,
                                        lambda windows: _mirrored(model, windows, tta), overlap=overlap,
                                        mode="gaussian", padding_mode="constant", cval=0.0).float()
    if resize == "squash":
        inner = (image_size, image_size)
        net_in = F.interpolate(image, size=inner, mode="bilinear", align_corners=False, antialias=True)
        logits = _mirrored(model, net_in, tta)
    else:  # pad
        scale = image_size / max(height, width)
        inner = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = F.interpolate(image, size=inner, mode="bilinear", align_corners=False, antialias=True)
        padded_hw = [math.ceil(s / PAD_MULTIPLE) * PAD_MULTIPLE for s in inner]
        top, left = (padded_hw[0] - inner[0]) // 2, (padded_hw[1] - inner[1]) // 2
        net_in = F.pad(scaled, (left, padded_hw[1] - inner[1] - left, top, padded_hw[0] - inner[0] - top))
        logits = _mirrored(model, net_in, tta)[..., top : top + inner[0], left : left + inner[1]]
    return F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """``B×K×H×W`` logits -> per-class probabilities ``B×max(K,2)×H×W`` (channel 0 = background).

    One channel is the binary sigmoid model: ``[1 - p, p]``; K ≥ 2 channels are softmaxed.
    """
    if logits.shape[1] == 1:
        foreground = torch.sigmoid(logits)
        return torch.cat([1 - foreground, foreground], dim=1)
    return torch.softmax(logits, dim=1)


@torch.no_grad()
def predict_folder(model: Callable[[torch.Tensor], torch.Tensor], source: str | Path | Sequence[Path], out_dir: str | Path,
                   image_size: int, channels: int = 3, threshold: float = 0.5, write_overlays: bool = True,
                   resize: str = "squash", tta: bool = False, save_probabilities: bool = False,
                   progress: bool = False, device: str | torch.device | None = None,
                   labels: list[str] | None = None, compile: bool = False, overwrite: bool = False,
                   skipped: dict[str, str] | None = None) -> list[Path]:
    """Segment every image in ``source`` (a folder, one file, or a list of files).

    Writes ``masks/<stem>.png`` at the image's own size (binary: 0/255; K classes: the class
    index 0..K-1 per pixel, as nnU-Net label maps), ``overlays/<stem>.png`` unless
    ``write_overlays`` is off, and with ``save_probabilities`` ``probabilities/<stem>.npz``
    holding ``probabilities``: float32 ``K×H×W`` with the background as channel 0 (binary: 2×H×W).
    ``threshold`` applies to the binary foreground probability only (K classes take the argmax).
    ``labels`` (the run's class names): with K > 2 they are written to ``out_dir/labels.json``,
    so the masks folder reads back as a declared label dataset. ``out_dir/predict.json`` records
    the source images and settings (``laworder gallery`` shows the predictions beside them).

    Under ``accelerate launch`` each process segments every N-th image into the same ``out_dir``
    (``laworder.parallel``) on its own device; every process returns the full list of masks.
    ``device`` defaults to that process device, else CPU.

    ``out_dir`` is checked before anything is written (``laworder.outputs.OutputFolder``): it may
    not hold or lie inside the images; a non-empty folder needs ``overwrite``, which replaces only
    what an earlier prediction wrote there (its ``.laworder-manifest.json``), never other files.
    Two images with one stem (``a.png``, ``a.jpg``) are refused. On an error the new files are
    removed and the replaced ones put back. ``skipped`` ({path: reason}) goes to ``skipped.json``.

    Raises:
        ConfigError: unknown ``resize``. DataError: two images with one stem. RunDirError: the folder.
    """
    from laworder.data.precheck import SKIPPED
    from laworder.outputs import OutputFolder, atomic_path, check_unique_names

    if resize not in RESIZE_MODES:
        raise ConfigError(f"unknown resize mode {resize!r}; choose one of {', '.join(RESIZE_MODES)}")
    out_dir = Path(out_dir)
    all_files = list(source) if isinstance(source, (list, tuple)) else list_images(source)
    check_unique_names(all_files, what="images", target="mask name (masks/<stem>.png)")
    planned = ["masks", "overlays", "probabilities", "labels.json", SKIPPED, PREDICT_RECORD]  # all: a replaced run's extras go too
    inputs = {"SOURCE": sorted({path.parent for path in all_files}) + all_files}
    folder = OutputFolder(out_dir, planned, overwrite, what="output", inputs=inputs, kind="seg predict",
                          hint="choose an empty folder or pass --overwrite (replaces earlier predictions only)")
    folder.check()
    state = parallel.process_state()
    parallel.wait(state)  # every process has checked the folder before the main one prepares it
    with folder if state.is_main_process else _nothing():
        parallel.wait(state)
        written = _predict_files(model, all_files, out_dir, image_size, channels, threshold, write_overlays, resize,
                                 tta, save_probabilities, progress, device, labels, compile, state, atomic_path)
        if skipped and state.is_main_process:
            from laworder.outputs import write_json_atomic

            write_json_atomic(out_dir / SKIPPED, {"count": len(skipped), "skipped": skipped})
        parallel.wait(state)
    order = {path.stem: index for index, path in enumerate(all_files)}
    return sorted(written, key=lambda target: order[target.stem])


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def _predict_files(model, all_files, out_dir, image_size, channels, threshold, write_overlays, resize, tta,
                   save_probabilities, progress, device, labels, compile, state, atomic_path) -> list[Path]:
    device = torch.device(device) if device is not None else (state.device if parallel.is_distributed(state) else "cpu")
    if isinstance(model, torch.nn.Module):
        # a copy with BN folded, channels_last where it pays (compiled with ``compile``); same outputs
        model = inference_model(model, device, compile)
    else:  # an onnxruntime session (OnnxSegmenter) takes and returns CPU tensors
        device = torch.device("cpu")
    files = parallel.my_share(all_files, state)
    if progress and state.is_main_process:  # a bar on a terminal, a few plain lines in a log
        from laworder.progress import progress as progress_bar

        files = progress_bar(files, desc="predict", unit="images")
    written = []
    for path in files:
        image = read_image(path, channels)
        tensor = torch.from_numpy(image).permute(2, 0, 1).float().div(255).unsqueeze(0).to(device)
        logits = predict_logits(model, tensor, image_size, resize, tta)
        target = out_dir / "masks" / f"{path.stem}.png"
        if logits.shape[1] == 1:
            prob = torch.sigmoid(logits)
            predicted = (prob[0, 0] >= threshold).cpu().numpy()
            with atomic_path(target) as tmp:
                write_mask(tmp, predicted)
        else:
            prob = torch.softmax(logits, dim=1)
            predicted = prob[0].argmax(0).to(torch.uint8).cpu().numpy()
            with atomic_path(target) as tmp:
                write_image(tmp, predicted)
        written.append(target)
        if save_probabilities:
            target_npz = out_dir / "probabilities" / f"{path.stem}.npz"
            with atomic_path(target_npz) as tmp:
                np.savez_compressed(tmp, probabilities=probabilities(logits)[0].cpu().numpy().astype(np.float32))
        if write_overlays:
            rgb = image if image.shape[2] == 3 else np.repeat(image[..., :1], 3, axis=2)
            picture = overlay(rgb, predicted) if predicted.dtype == bool else overlay_labels(rgb, predicted)
            with atomic_path(out_dir / "overlays" / f"{path.stem}.png") as tmp:
                write_image(tmp, picture)
    if is_multiclass(labels) and state.is_main_process:
        write_labels(out_dir, labels)
    if state.is_main_process:  # where the images came from, so `laworder gallery` can show them
        from laworder.outputs import write_json_atomic

        record = {"images": [str(Path(path).resolve()) for path in all_files], "image_size": image_size,
                  "channels": channels, "resize": resize, "tta": tta, "threshold": threshold}
        write_json_atomic(out_dir / PREDICT_RECORD, record)
    return parallel.gather(written, state)

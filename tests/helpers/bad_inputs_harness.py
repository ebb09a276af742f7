"""Run many bad-input CLI cases in ONE process (one torch import instead of one per case).

    python bad_inputs_harness.py ROOT CASES.json RESULTS.json

``ROOT`` holds the fixtures (``build_fixtures`` makes them once: a tiny dataset, a trained
segmenter, a trained diffusion run, a pool, corrupt files, ...). Each case is
``{"id": ..., "argv": [...], "env": {...}}`` with ``{name}`` placeholders filled from the fixture
paths. For each case the harness snapshots every file under ``ROOT`` (and the working folder),
calls ``laworder.cli.main(argv)`` with stdout/stderr captured, and records the exit code, the
stderr text and the files created, changed or removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import sys
from pathlib import Path


def snapshot(root: Path) -> dict[str, str]:
    """path -> size + sha1 of every file (and empty folder) under ``root``."""
    files = {}
    for folder, dirs, names in os.walk(root):
        if not dirs and not names:
            files[os.path.relpath(folder, root) + "/"] = "dir"
        for name in names:
            path = Path(folder) / name
            try:
                data = path.read_bytes()
            except OSError:
                data = b"<unreadable>"
            files[str(path.relative_to(root))] = f"{len(data)}:{hashlib.sha1(data).hexdigest()}"
    return files


def build_fixtures(root: Path) -> dict[str, str]:
    """Small inputs every case refers to (returned as placeholder name -> path)."""
    import torch

    torch.set_num_threads(1)
    from laworder.cli import main
    from laworder.data.procedural import generate_procedural

    root.mkdir(parents=True, exist_ok=True)
    fx = {"root": str(root)}
    fx["data"] = str(generate_procedural(root / "data", num_images=6, size=32, seed=0))
    quiet = contextlib.redirect_stdout(io.StringIO())
    with quiet:
        assert main(["seg", "train", "--data", fx["data"], "--model", "mk_unet", "--image-size", "32", "--epochs", "1",
                     "--batch-size", "4", "-o", str(root / "segrun"), "--no-progress"]) == 0
        assert main(["synth", "train", "--data", fx["data"], "--objective", "uniform", "--resolution", "32",
                     "--set", "backbone_kwargs.preset=tiny", "--max-steps", "1", "--batch-size", "2",
                     "-o", str(root / "synthrun"), "--no-progress"]) == 0
        assert main(["synth", "sample", str(root / "synthrun"), fx["data"], str(root / "pool"), "--steps", "1",
                     "--limit", "2", "--no-progress", "--device", "cpu"]) == 0
    fx.update(segrun=str(root / "segrun"), synthrun=str(root / "synthrun"), pool=str(root / "pool"))
    fx["missing"] = str(root / "does-not-exist")
    fx["empty"] = str(root / "empty")
    (root / "empty").mkdir()
    fx["file"] = str(root / "a-file.txt")
    (root / "a-file.txt").write_text("not a folder\n")
    fx["nonempty"] = str(root / "nonempty")
    (root / "nonempty").mkdir()
    (root / "nonempty" / "keep.txt").write_text("someone else's file\n")
    images = root / "images"
    images.mkdir()
    for stem, source in zip(("a", "b"), sorted((Path(fx["data"]) / "images").iterdir())):
        (images / f"{stem}.png").write_bytes(source.read_bytes())
    fx["images"] = str(images)
    corrupt = root / "corrupt_images"
    corrupt.mkdir()
    good = (images / "a.png").read_bytes()
    (corrupt / "a.png").write_bytes(good)
    (corrupt / "b.png").write_bytes(good[: len(good) // 2])  # truncated
    fx["corrupt_images"] = str(corrupt)
    # a pair folder whose second image is truncated
    corrupt_data = root / "corrupt_data"
    for sub in ("images", "masks"):
        (corrupt_data / sub).mkdir(parents=True)
        for index, path in enumerate(sorted((Path(fx["data"]) / sub).iterdir())[:4]):
            data = path.read_bytes()
            (corrupt_data / sub / path.name).write_bytes(data[: len(data) // 3] if (index == 1 and sub == "images") else data)
    fx["corrupt_data"] = str(corrupt_data)
    masks_bad = root / "corrupt_masks"
    masks_bad.mkdir()
    (masks_bad / "m1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    fx["corrupt_masks"] = str(masks_bad)
    # a pool whose image is truncated
    corrupt_pool = root / "corrupt_pool"
    for path in Path(fx["pool"]).rglob("*"):
        if path.is_file():
            target = corrupt_pool / path.relative_to(fx["pool"])
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    first = sorted((corrupt_pool / "images").iterdir())[0]
    first.write_bytes(first.read_bytes()[:40])
    fx["corrupt_pool"] = str(corrupt_pool)
    # a run folder whose weights are garbage
    bad_weights = root / "bad_weights_run"
    (bad_weights / "model" / "best").mkdir(parents=True)
    (bad_weights / "config.yaml").write_text((Path(fx["segrun"]) / "config.yaml").read_text())
    (bad_weights / "model" / "best" / "model.safetensors").write_bytes(b"garbage" * 10)
    fx["bad_weights_run"] = str(bad_weights)
    wrong_weights = root / "wrong_weights_run"
    (wrong_weights / "model" / "best").mkdir(parents=True)
    (wrong_weights / "config.yaml").write_text((Path(fx["segrun"]) / "config.yaml").read_text().replace("mk_unet", "order"))
    (wrong_weights / "model" / "best" / "model.safetensors").write_bytes(
        (Path(fx["segrun"]) / "model" / "best" / "model.safetensors").read_bytes())
    fx["wrong_weights_run"] = str(wrong_weights)
    yamls = root / "yaml"
    yamls.mkdir()
    (yamls / "list.yaml").write_text("- 1\n- 2\n")
    (yamls / "broken.yaml").write_text("loop: {lr: [1,\n")
    (yamls / "nokind.yaml").write_text("title: x\n")
    (yamls / "badkind.yaml").write_text("kind: nosuch\n")
    (yamls / "seg_compare.yaml").write_text(f"kind: seg_compare\noutput_dir: {root / 'exp_out'}\n")
    fx["yaml"] = str(yamls)
    fx["existing_json"] = str(root / "scores.json")
    (root / "scores.json").write_text("{}\n")
    # a dataset with one huge-header image (a decompression bomb by its header: 30000×30000, a few bytes on disk)
    import struct
    import zlib

    bomb = root / "bomb"
    bomb.mkdir()
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)  # 900 M pixels claimed, ~100 bytes on disk
    (bomb / "big.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                                   + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    fx["bomb"] = str(bomb)
    fx["locked"] = str(root / "locked")  # held by another process (the test starts it)
    fx["nnunet_existing"] = str(root / "nnunet_raw")
    (root / "nnunet_raw" / "Dataset501_Polyps").mkdir(parents=True)
    (root / "nnunet_raw" / "Dataset501_Polyps" / "dataset.json").write_text("{}\n")
    build_input_fixtures(root, fx)
    build_safety_fixtures(root, fx)
    return fx


def _copy_pairs(source: Path, target: Path, count: int = 4) -> Path:
    """The first ``count`` pairs of a pair folder, copied to ``target``."""
    for sub in ("images", "masks"):
        (target / sub).mkdir(parents=True, exist_ok=True)
        for path in sorted((source / sub).iterdir())[:count]:
            (target / sub / path.name).write_bytes(path.read_bytes())
    return target


def _copy_run(source: Path, target: Path, config_text: str | bytes) -> str:
    """A segmentation run folder (its best weights) whose ``config.yaml`` is ``config_text``."""
    (target / "model" / "best").mkdir(parents=True)
    weights = source / "model" / "best" / "model.safetensors"
    (target / "model" / "best" / "model.safetensors").write_bytes(weights.read_bytes())
    if isinstance(config_text, bytes):
        (target / "config.yaml").write_bytes(config_text)
    else:
        (target / "config.yaml").write_text(config_text)
    return str(target)


def build_input_fixtures(root: Path, fx: dict[str, str]) -> None:
    """Inputs read wrongly or hostile (issue 24 items 4-6): symlink loops, non-UTF-8 and alias-bomb
    YAML, edited run configs, malformed results.json, non-finite float TIFFs, label values above 255."""
    import numpy as np
    from PIL import Image

    data = Path(fx["data"])
    # symlink loops: an image that links to itself, and an images/ folder that does
    loop_file = _copy_pairs(data, root / "symloop_file")
    os.symlink("loop.png", loop_file / "images" / "loop.png")
    os.symlink("loop.png", loop_file / "masks" / "loop.png")
    fx["symloop_file"] = str(loop_file)
    loop_dir = root / "symloop_dir"
    loop_dir.mkdir()
    os.symlink("images", loop_dir / "images")
    os.symlink("masks", loop_dir / "masks")
    fx["symloop_dir"] = str(loop_dir)
    predict_loop = root / "symloop_images"
    predict_loop.mkdir()
    (predict_loop / "a.png").write_bytes((Path(fx["images"]) / "a.png").read_bytes())
    os.symlink("b.png", predict_loop / "b.png")
    fx["symloop_images"] = str(predict_loop)
    # YAML: not UTF-8, alias bombs (expanding to 9**9 items), recursion, nesting, size
    yamls = Path(fx["yaml"])
    (yamls / "latin1.yaml").write_bytes(b"# r\xe9glages du caf\xe9\nimage_size: 32\n")
    (yamls / "latin1_exp.yaml").write_bytes(b"kind: seg_compare\ntitle: caf\xe9\n")
    (yamls / "utf16.yaml").write_bytes("image_size: 32\n".encode("utf-16"))
    laughs = ["lol0: &lol0 [lol]"] + [f"lol{i}: &lol{i} [{', '.join(f'*lol{i - 1}' for _ in range(9))}]"
                                       for i in range(1, 10)]
    (yamls / "bomb.yaml").write_text("model_kwargs:\n" + "".join(f"  {line}\n" for line in laughs))
    (yamls / "bomb_exp.yaml").write_text("kind: seg_compare\nextra:\n" + "".join(f"  {line}\n" for line in laughs))
    (yamls / "recursive.yaml").write_text("model_kwargs: &a {self: *a}\n")
    (yamls / "deep.yaml").write_text("model_kwargs: " + "[" * 3000 + "]" * 3000 + "\n")
    (yamls / "huge.yaml").write_text("# padding\n" * 700_000)  # 7 MB of comments
    (yamls / "python_tag.yaml").write_text("model_kwargs: !!python/object/apply:os.system [echo hi]\n")
    (yamls / "seed_huge.yaml").write_text("loop: {seed: 1e30}\n")
    fx["bomb_value"] = "{" + ", ".join(laughs).replace(": ", ": ") + "}"
    # run folders whose config.yaml was edited by hand
    segrun = Path(fx["segrun"])
    config = (segrun / "config.yaml").read_text()
    edits = {"run_size50": config.replace("image_size: 32", "image_size: 50"),
             "run_size_text": config.replace("image_size: 32", "image_size: big"),
             "run_size_zero": config.replace("image_size: 32", "image_size: 0"),
             "run_size_huge": config.replace("image_size: 32", "image_size: 1048576"),
             "run_channels2": config.replace("channels: 3", "channels: 2"),
             "run_threshold": config.replace("threshold: 0.5", "threshold: 7"),
             "run_unknown_model": config.replace("model: mk_unet", "model: nosuch"),
             "run_latin1": config.encode() + b"# \xe9dit\xe9\n",
             "run_empty_config": "",
             "run_bomb": config.replace("model_kwargs: {}", "model_kwargs:\n" + "".join(f"  {line}\n" for line in laughs))}
    for name, text in edits.items():
        fx[name] = _copy_run(segrun, root / name, text)
    # experiment folders with a malformed results.json
    for name, text in {"results_garbage": "{not json", "results_list": "[1, 2]",
                       "results_no_kind": '{"results": {}}', "results_unknown_kind": '{"kind": "nosuch", "results": {}}',
                       "results_deep": "[" * 100000 + "]" * 100000, "results_latin1": b'{"kind": "caf\xe9"}'}.items():
        (root / name).mkdir()
        target = root / name / "results.json"
        target.write_bytes(text) if isinstance(text, bytes) else target.write_text(text)
        fx[name] = str(root / name)
    # a float TIFF with a NaN pixel (image), and one as a mask
    nan_data = _copy_pairs(data, root / "nan_data")
    first = sorted((nan_data / "images").iterdir())[0]
    pixels = np.asarray(Image.open(first).convert("L"), dtype=np.float32) / 255.0
    pixels[3, 3] = np.nan
    first.unlink()
    Image.fromarray(pixels, mode="F").save(nan_data / "images" / (first.stem + ".tif"))
    fx["nan_data"] = str(nan_data)
    nan_images = root / "nan_images"
    nan_images.mkdir()
    Image.fromarray(pixels, mode="F").save(nan_images / "a.tif")
    fx["nan_images"] = str(nan_images)
    inf_masks = _copy_pairs(data, root / "inf_masks")
    mask_file = sorted((inf_masks / "masks").iterdir())[0]
    levels = np.asarray(Image.open(mask_file).convert("L"), dtype=np.float32)
    levels[0, 0] = np.inf
    mask_file.unlink()
    Image.fromarray(levels, mode="F").save(inf_masks / "masks" / (mask_file.stem + ".tif"))
    fx["inf_masks"] = str(inf_masks)
    # a multi-class dataset declaring 300 classes, and one whose 16-bit label map holds 300
    many = _copy_pairs(data, root / "many_classes")
    (many / "labels.json").write_text(json.dumps({"background": 0, **{f"c{i}": i for i in range(1, 300)}}))
    fx["many_classes"] = str(many)
    wide = _copy_pairs(data, root / "wide_labels")
    (wide / "labels.json").write_text(json.dumps({"background": 0, "a": 1, "b": 2}))
    label_file = sorted((wide / "masks").iterdir())[0]
    label_map = (np.asarray(Image.open(label_file).convert("L")) > 0).astype(np.int32) * 300
    Image.fromarray(label_map.astype(np.uint16)).save(label_file)  # 16-bit PNG
    fx["wide_labels"] = str(wide)
    # labels.json that is not UTF-8 / not JSON
    bad_labels = _copy_pairs(data, root / "bad_labels")
    (bad_labels / "labels.json").write_bytes(b'{"fond": 0, "l\xe9sion": 1, "x": 2}')
    fx["bad_labels"] = str(bad_labels)
    bad_groups = _copy_pairs(data, root / "bad_groups")
    (bad_groups / "groups.json").write_text("[1, 2, 3]")
    fx["bad_groups"] = str(bad_groups)


def _copy_tree(source: Path, target: Path) -> None:
    for path in source.rglob("*"):
        if path.is_file():
            (target / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            (target / path.relative_to(source)).write_bytes(path.read_bytes())


def build_safety_fixtures(root: Path, fx: dict[str, str]) -> None:
    """Folders the never-destroy / leave-as-it-was cases aim at (issue 24 items 2-3)."""
    from laworder.cli import main

    quiet = contextlib.redirect_stdout(io.StringIO())
    with quiet:
        assert main(["seg", "predict", fx["segrun"], fx["images"], str(root / "pred_out"), "--no-progress"]) == 0
        assert main(["seg", "evaluate", fx["segrun"], "--out", str(root / "eval_out"), "--no-progress"]) == 0
        assert main(["data", "procedural", str(root / "proc"), "--num-images", "2", "--size", "32"]) == 0
    fx.update(pred_out=str(root / "pred_out"), eval_out=str(root / "eval_out"), proc=str(root / "proc"))
    dupes = root / "dupes"  # a.png and a.jpg: one masks/a.png
    dupes.mkdir()
    (dupes / "a.png").write_bytes((root / "images" / "a.png").read_bytes())
    from PIL import Image

    Image.open(root / "images" / "b.png").convert("RGB").save(dupes / "a.jpg")
    fx["dupes"] = str(dupes)
    fake_run = root / "fake_run"  # a user's folder with run-like names and no config.yaml
    (fake_run / "model").mkdir(parents=True)
    (fake_run / "model" / "mine.bin").write_bytes(b"user weights")
    (fake_run / "metrics.jsonl").write_text('{"step": 1}\n')
    fx["fake_run"] = str(fake_run)
    (root / "data_link").symlink_to(Path(fx["data"]), target_is_directory=True)
    fx["data_link"] = str(root / "data_link")
    raw_src = root / "raw_src" / "Dataset501_Polyps"  # a source dataset inside the export's target
    _copy_tree(Path(fx["data"]), raw_src)
    fx["raw_src"] = str(root / "raw_src")
    raw_pool = root / "raw_pool" / "Dataset502_P"
    _copy_tree(Path(fx["pool"]), raw_pool)
    fx["raw_pool"] = str(root / "raw_pool")
    (root / "sidedir.json").mkdir()  # a folder where an export's sidecar would go
    fx["sidedir"] = str(root / "sidedir.onnx")
    # run copies whose checkpoint is damaged in one way each (resume must refuse before any write)
    checkpoints = sorted((Path(fx["segrun"]) / "checkpoints").iterdir())
    assert checkpoints, "the fixture run wrote no checkpoint"
    damage = {"state_empty": ("trainer_state.json", b"{}"), "state_garbage": ("trainer_state.json", b"\xff\xfe not json"),
              "state_step": ("trainer_state.json", None), "optimizer": ("optimizer.pt", b"garbage"),
              "rng_missing": ("rng.pt", b"")}
    for name, (file, data) in damage.items():
        run = root / f"damaged_{name}"
        _copy_tree(Path(fx["segrun"]), run)
        target = run / "checkpoints" / checkpoints[-1].name / file
        if name == "state_step":
            state = json.loads(target.read_text())
            state["global_step"] += 7
            data = json.dumps(state).encode()
        if name == "rng_missing":
            target.unlink()
        else:
            target.write_bytes(data)
        fx[f"damaged_{name}"] = str(run)


def fill(word: str, fx: dict[str, str]) -> str:
    """``{name}`` placeholders -> fixture paths (other braces, as in ``{a: 1}``, stay)."""
    for name, value in fx.items():
        word = word.replace("{" + name + "}", value)
    return word


FULL_DISK = "_full_disk_after"  # a case "env" key the harness reads: writes fail with ENOSPC after N opened files


@contextlib.contextmanager
def full_disk(under: Path, after: int):
    """Every file opened for writing below ``under`` (after the first ``after``) is created empty
    and its first write raises ``OSError(ENOSPC)``, as on a full disk (builtins/io open, safetensors)."""
    import builtins
    import errno

    real_open = builtins.open
    opened = [0]
    under = Path(os.path.realpath(under))

    class Full:
        def __init__(self, handle):
            self._handle = handle

        def write(self, *args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        writelines = write

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._handle.close()

        def __getattr__(self, name):
            return getattr(self._handle, name)

    def fake_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        writing = any(flag in mode for flag in "wax+")
        if writing and isinstance(file, (str, os.PathLike)) and under in Path(os.path.realpath(file)).parents:
            opened[0] += 1
            if opened[0] > after:
                return Full(handle)
        return handle

    import safetensors.torch as st

    real_save = st.save_file

    def fake_save(tensors, filename, *args, **kwargs):
        opened[0] += 1
        if opened[0] > after:
            real_open(filename, "wb").close()
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, filename, *args, **kwargs)

    builtins.open, io.open, st.save_file = fake_open, fake_open, fake_save
    try:
        yield
    finally:
        builtins.open, io.open, st.save_file = real_open, real_open, real_save


def run_cases(root: Path, cases: list[dict], fx: dict[str, str]) -> list[dict]:
    from laworder.cli import main

    results = []
    cwd = Path.cwd()
    for case in cases:
        argv = [fill(word, fx) for word in case["argv"]]
        before = {**snapshot(root), **{f"cwd/{k}": v for k, v in snapshot(cwd).items()}}
        out, err = io.StringIO(), io.StringIO()
        env = dict(case.get("env", {}))
        fault = env.pop(FULL_DISK, None)
        saved_env = {k: os.environ.get(k) for k in env}
        os.environ.update({k: fill(v, fx) for k, v in env.items()})
        logging.root.handlers.clear()  # main's basicConfig binds the current (captured) stderr
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                    full_disk(root, int(fault)) if fault is not None else contextlib.nullcontext():
                try:
                    code = main(argv)
                except SystemExit as exc:  # --help/--version only; errors must not exit
                    code = f"SystemExit({exc.code})"
        except BaseException as exc:  # noqa: BLE001  a case that escapes main is a failure to report
            code = f"raised {type(exc).__name__}: {exc}"
        finally:
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            from laworder.data.io import set_max_image_pixels

            set_max_image_pixels(None)
        after = {**snapshot(root), **{f"cwd/{k}": v for k, v in snapshot(cwd).items()}}
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        result = {"id": case["id"], "argv": argv, "code": code, "stderr": err.getvalue(), "changed": changed}
        if fault is not None:  # the same command on a disk with room again: not blocked by the failed one
            result["rerun_code"], result["rerun_stderr"] = rerun(main, argv, root, before)
        results.append(result)
    return results


def rerun(main, argv: list[str], root: Path, before: dict[str, str]) -> tuple[object, str]:
    """Run ``argv`` again without the fault, then remove what it wrote (later cases see the fixtures)."""
    import shutil

    err = io.StringIO()
    logging.root.handlers.clear()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except BaseException as exc:  # noqa: BLE001
            code = f"raised {type(exc).__name__}: {exc}"
    kept = set(before) | {str(parent) for key in before for parent in Path(key.rstrip("/")).parents}
    for path in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):
        rel = str(path.relative_to(root))
        if rel in kept or rel + "/" in kept or any(parent.is_symlink() for parent in [path, *path.parents]):
            continue
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return code, err.getvalue()


def main() -> None:
    root, cases_file, results_file = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    fx_file = root.parent / "fixtures.json"
    if fx_file.is_file():
        fx = json.loads(fx_file.read_text())
    else:
        fx = build_fixtures(root)
        fx_file.write_text(json.dumps(fx))
    if len(sys.argv) > 4 and sys.argv[4] == "--fixtures-only":
        return
    cases = json.loads(cases_file.read_text())
    results_file.write_text(json.dumps(run_cases(root, cases, fx), indent=1))


if __name__ == "__main__":
    main()

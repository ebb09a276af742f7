"""Experiment tracking through accelerate's trackers: TensorBoard, Weights & Biases, CSV, or none.

``metrics.jsonl`` is always written by the loop; a tracker is a second view of the same numbers
(plus images) in ``<run>/logs/``. Scalars are grouped ``train/<name>`` and ``val/<name>``.
W&B is used only when asked for and installed; it keeps its own settings (``WANDB_MODE=offline``,
``WANDB_PROJECT``, ``WANDB_DIR``), and its files go to ``<run>/logs`` unless ``WANDB_DIR`` says otherwise.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from accelerate.tracking import GeneralTracker, on_main_process

from laworder.errors import ConfigError
from laworder.training.config import REPORT_TO

LOG_DIR = "logs"  # inside the run folder
CSV_FILE = "metrics.csv"

# what each tracker needs installed, and how to get it
_PACKAGES = {"tensorboard": ("tensorboard", "pip install tensorboard"), "wandb": ("wandb", "pip install wandb")}


def check_report_to(report_to: str) -> None:
    """Refuse an unknown tracker, or one whose package is missing, before anything is written.

    Raises:
        ConfigError: ``report_to`` not in ``REPORT_TO``, or its package is not installed.
    """
    if report_to not in REPORT_TO:
        raise ConfigError(f"report_to must be one of {', '.join(REPORT_TO)}, got {report_to!r}")
    if report_to in _PACKAGES:
        module, install = _PACKAGES[report_to]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"--report-to {report_to} needs the {module} package, which is not installed ({install}); "
                "or use --report-to csv / none (metrics.jsonl is always written)"
            )


def tracker_key(name: str) -> str:
    """``val_dice`` -> ``val/dice``; every other loop key -> ``train/<key>`` (TensorBoard groups by prefix)."""
    return f"val/{name[4:]}" if name.startswith("val_") else f"train/{name}"


class CSVTracker(GeneralTracker):
    """A minimal accelerate tracker: one ``step,tag,value`` row per scalar in ``<logging_dir>/metrics.csv``.

    The long format needs no fixed columns (training and validation log different keys) and
    pivots directly in pandas / a spreadsheet. Rows after ``resume_step`` are dropped on start,
    so a resumed run's curve has no duplicates.
    """

    name = "csv"
    requires_logging_directory = True
    main_process_only = True

    def __init__(self, logging_dir: str | os.PathLike, resume_step: int | None = None) -> None:
        super().__init__()
        self.path = Path(logging_dir) / CSV_FILE
        self.resume_step = resume_step

    @property
    def tracker(self) -> Path:
        return self.path

    @on_main_process
    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if self.resume_step is not None and self.path.is_file():
            with open(self.path, newline="") as fh:
                kept = [row for row in csv.DictReader(fh) if row["step"] and int(row["step"]) <= self.resume_step]
        with open(self.path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["step", "tag", "value"])
            writer.writeheader()
            writer.writerows(kept)

    @on_main_process
    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        with open(self.path, "a", newline="") as fh:
            writer = csv.writer(fh)
            for tag, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    writer.writerow([step if step is not None else "", tag, repr(float(value))])


def read_csv_log(path: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """``metrics.csv`` -> ``{tag: [(step, value), ...]}`` in file order."""
    curves: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            curves.setdefault(row["tag"], []).append((int(row["step"]), float(row["value"])))
    return curves


class RunTracking:
    """The loop's side of tracking: builds accelerate's ``log_with``, starts the trackers after the
    run folder is ready, and forwards scalars and images (``H×W×C`` floats in [0, 1])."""

    def __init__(self, report_to: str, run_dir: Path) -> None:
        check_report_to(report_to)
        self.report_to = report_to
        self.log_dir = Path(run_dir) / LOG_DIR
        self.accelerator = None
        self._csv = CSVTracker(self.log_dir) if report_to == "csv" else None

    @property
    def enabled(self) -> bool:
        return self.report_to != "none"

    def log_with(self) -> list[Any] | None:
        """What ``Accelerator(log_with=...)`` takes."""
        if not self.enabled:
            return None
        return [self._csv] if self._csv is not None else [self.report_to]

    def start(self, accelerator, run_config: dict[str, Any], resume_step: int | None) -> None:
        """``accelerator.init_trackers`` once the run folder exists; on resume, later events are dropped."""
        self.accelerator = accelerator
        if not self.enabled:
            return
        init_kwargs: dict[str, dict[str, Any]] = {}
        if resume_step is not None:
            # TensorBoard drops events at or after purge_step: the abandoned tail of a killed run.
            init_kwargs["tensorboard"] = {"purge_step": resume_step + 1}
        if self._csv is not None:
            self._csv.resume_step = resume_step
        if self.report_to == "wandb" and accelerator.is_main_process:
            init_kwargs["wandb"] = {"dir": os.environ.get("WANDB_DIR", str(self.log_dir)), "name": self.log_dir.parent.name,
                                    "id": self._wandb_run_id(fresh=resume_step is None), "resume": "allow"}
        # accelerate writes TensorBoard events to <logging_dir>/<project>: project "logs" -> <run>/logs
        project = os.environ.get("WANDB_PROJECT", "laworder") if self.report_to == "wandb" else LOG_DIR
        # TensorBoard's hparams view writes a second event folder; the config text is clearer.
        config = _flatten(run_config) if self.report_to == "wandb" else None
        accelerator.init_trackers(project, config=config, init_kwargs=init_kwargs)
        if self.report_to == "tensorboard" and resume_step is None:
            import yaml

            accelerator.log({"config": "```\n" + yaml.safe_dump(run_config, sort_keys=False) + "```"}, step=0)

    def _wandb_run_id(self, fresh: bool) -> str:
        """One W&B run per run folder: the id is kept in ``logs/wandb_run_id`` so a resume continues it."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        id_file = self.log_dir / "wandb_run_id"
        if fresh or not id_file.is_file():
            id_file.write_text(uuid.uuid4().hex[:12])
        return id_file.read_text().strip()

    def scalars(self, record: dict[str, Any], step: int) -> None:
        """Log a ``metrics.jsonl`` record (its ``step``, ``epoch``, ``time`` keys are not curves)."""
        if not self.enabled:
            return
        values = {tracker_key(k): float(v) for k, v in record.items()
                  if k not in ("step", "epoch", "time") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.accelerator.log(values, step=step)

    def images(self, images: dict[str, np.ndarray], step: int) -> None:
        """Log ``{tag: H×W×C float image in [0, 1]}`` to trackers that take images (not CSV)."""
        if not self.enabled or not images:
            return
        for tracker in self.accelerator.trackers:
            if not hasattr(tracker, "log_images"):
                continue
            batch = {tag: np.clip(np.asarray(image, np.float32), 0, 1)[None] for tag, image in images.items()}
            kwargs = {"dataformats": "NHWC"} if tracker.name == "tensorboard" else {}
            tracker.log_images(batch, step=step, **kwargs)

    def finish(self) -> None:
        """Close the trackers (not ``accelerator.end_training``: that also ends the process group)."""
        if self.enabled and self.accelerator is not None:
            for tracker in self.accelerator.trackers:
                tracker.finish()
            self.accelerator.trackers = []


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> ``{"loop.lr": 1e-4, ...}`` with lists and ``None`` as strings (tracker hparams)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat

"""The one training core shared by segmentation and synthesis."""

from laworder.training.config import LoopConfig
from laworder.training.loop import FitResult, fit, prepare_run_dir
from laworder.training.task import StepOutput, TrainTask
from laworder.training.checkpoint import load_weights, save_weights
from laworder.training.sampling import step_generator

__all__ = ["LoopConfig", "FitResult", "fit", "prepare_run_dir", "StepOutput", "TrainTask", "load_weights", "save_weights", "step_generator"]

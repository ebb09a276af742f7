"""The one training core shared by segmentation and synthesis."""

_LAZY = {  # name -> submodule: importing a light submodule (tracking, validate) does not pull in torch
    "LoopConfig": "config",
    "FitResult": "loop", "fit": "loop", "prepare_run_dir": "loop",
    "StepOutput": "task", "TrainTask": "task",
    "load_weights": "checkpoint", "save_weights": "checkpoint",
    "step_generator": "sampling",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"laworder.training.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'laworder.training' has no attribute {name!r}")


__all__ = ["LoopConfig", "FitResult", "fit", "prepare_run_dir", "StepOutput", "TrainTask", "load_weights", "save_weights", "step_generator"]

"""laworder.data: datasets, layouts, splits, batch augmentation and dataset checks.

    collection = load_dataset("/data/polyps")            # or "procedural:200:128:0"
    train, val = train_val_split(collection.train, 0.1, seed=0)
    loader = DataLoader(PairDataset(train, size=256, cache=True), batch_size=16)
    images, masks = augment_batch(batch["image"], batch["mask"], generator)

The names below are imported on first use: ``laworder.data.io`` or ``laworder.data.check`` (the
command line's ``data check``, its argument checks) need no torch, only ``dataset`` and
``transforms`` do.
"""

_LAZY = {  # name -> submodule
    "CheckReport": "check", "Problem": "check", "check_dataset": "check", "ensure_valid": "check",
    "PairDataset": "dataset", "load_pair": "dataset",
    "IMAGE_EXTENSIONS": "io", "read_image": "io", "read_mask": "io", "write_image": "io", "write_mask": "io",
    "prepare_kits19": "kits19",
    "LAYOUTS": "layouts", "default_cache_dir": "layouts", "detect_layout": "layouts", "load_dataset": "layouts",
    "generate_procedural": "procedural", "procedural_pair": "procedural",
    "DatasetCollection": "records", "PairRecord": "records",
    "check_data_source": "source",
    "load_split": "splits", "save_split": "splits", "train_val_split": "splits",
    "augment_batch": "transforms",
}


def __getattr__(name: str):
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(f"laworder.data.{_LAZY[name]}"), name)
    try:  # a submodule used as an attribute (``laworder.data.layouts``) before anyone imported it
        return importlib.import_module(f"laworder.data.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"laworder.data.{name}":
            raise
    raise AttributeError(f"module 'laworder.data' has no attribute {name!r}")


__all__ = sorted(_LAZY)

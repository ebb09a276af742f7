"""laworder.data: datasets, layouts, splits, batch augmentation and dataset checks.

    collection = load_dataset("/data/polyps")            # or "procedural:200:128:0"
    train, val = train_val_split(collection.train, 0.1, seed=0)
    loader = DataLoader(PairDataset(train, size=256, cache=True), batch_size=16)
    images, masks = augment_batch(batch["image"], batch["mask"], generator)
"""

from laworder.data.check import CheckReport, Problem, check_dataset, ensure_valid
from laworder.data.dataset import PairDataset, load_pair
from laworder.data.io import IMAGE_EXTENSIONS, read_image, read_mask, write_image, write_mask
from laworder.data.kits19 import prepare_kits19
from laworder.data.layouts import LAYOUTS, default_cache_dir, detect_layout, load_dataset
from laworder.data.procedural import generate_procedural, procedural_pair
from laworder.data.records import DatasetCollection, PairRecord
from laworder.data.splits import load_split, save_split, train_val_split
from laworder.data.transforms import augment_batch

__all__ = [
    "IMAGE_EXTENSIONS", "LAYOUTS", "CheckReport", "DatasetCollection", "PairDataset", "PairRecord", "Problem",
    "augment_batch", "check_dataset", "default_cache_dir", "detect_layout", "ensure_valid", "generate_procedural",
    "load_dataset", "load_pair", "load_split", "prepare_kits19", "procedural_pair", "read_image", "read_mask",
    "save_split", "train_val_split", "write_image", "write_mask",
]

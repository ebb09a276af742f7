"""ORDER[0,1] vs MK-UNet and the SE/CBAM controls on the real polyp data (paper Tables 7-8).

    .venv/bin/python bench/polyps.py            # CPU scale: 128², 20 epochs, 2 seeds
    .venv/bin/python bench/polyps.py --image-size 256 --epochs 100 --lr 1e-4 --seeds 0 1 2 3 4   # paper

Tested per subset (Kvasir, CVC-ClinicDB); writes bench/results/polyps.{json,md}.
"""

import importlib.util
import sys
from pathlib import Path

# bench/ holds profile.py, which would shadow the standard library's ``profile`` module.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
_spec = importlib.util.spec_from_file_location("seg_compare", HERE / "seg_compare.py")
seg_compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(seg_compare)
ROOT, parse, run = seg_compare.ROOT, seg_compare.parse, seg_compare.run

if __name__ == "__main__":
    run(parse(str(ROOT.parent / "shared" / "data" / "polyps"), "polyps"), "polyps")

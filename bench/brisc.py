"""ORDER[0,1] vs MK-UNet and the SE/CBAM controls on real BRISC brain-tumour MRI (paper Table 7).

    .venv/bin/python bench/brisc.py             # CPU scale: 128², 20 epochs, 2 seeds

Writes bench/results/brisc.{json,md}.
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
    run(parse(str(ROOT.parent / "shared" / "data" / "brisc"), "brisc"), "brisc")

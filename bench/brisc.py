"""ORDER[0,1] vs MK-UNet and the SE/CBAM controls on real BRISC brain-tumour MRI (paper Table 7).

    .venv/bin/python bench/brisc.py             # CPU scale: 128², 20 epochs, 2 seeds

Writes bench/results/brisc.{json,md}.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seg_compare import ROOT, parse, run  # noqa: E402

if __name__ == "__main__":
    run(parse(str(ROOT.parent / "shared" / "data" / "brisc"), "brisc"), "brisc")

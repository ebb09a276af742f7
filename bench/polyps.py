"""ORDER[0,1] vs MK-UNet and the SE/CBAM controls on the real polyp data (paper Tables 7-8).

    .venv/bin/python bench/polyps.py            # CPU scale: 128², 20 epochs, 2 seeds
    .venv/bin/python bench/polyps.py --image-size 256 --epochs 100 --lr 1e-4 --seeds 0 1 2 3 4   # paper

Tested per subset (Kvasir, CVC-ClinicDB); writes bench/results/polyps.{json,md}.
"""

import runpy
from pathlib import Path

if __name__ == "__main__":
    bench = runpy.run_path(str(Path(__file__).with_name("seg_compare.py")))  # not importable: see seg_compare.py
    bench["main"]("polyps", bench["ROOT"].parent / "shared" / "data" / "polyps")

"""ORDER[0,1] vs MK-UNet and the SE/CBAM controls on real BRISC brain-tumour MRI (paper Table 7).

    .venv/bin/python bench/brisc.py             # CPU scale: 128², 20 epochs, 2 seeds

Writes bench/results/brisc.{json,md}.
"""

import runpy
from pathlib import Path

if __name__ == "__main__":
    bench = runpy.run_path(str(Path(__file__).with_name("seg_compare.py")))  # not importable: see seg_compare.py
    bench["main"]("brisc", bench["ROOT"].parent / "shared" / "data" / "brisc")

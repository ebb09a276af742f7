"""``python -m laworder`` (and ``accelerate launch -m laworder ...``)."""

import sys

from laworder.cli import main

sys.exit(main())

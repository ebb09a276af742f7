"""``python -m laworder.cli`` (the same as ``python -m laworder`` and the ``laworder`` script)."""

import sys

from laworder.cli import main

sys.exit(main())

"""``python -m engrain ...``: the same as the ``engrain`` command (for environments without its script)."""

import sys

from engrain.cli import main

sys.exit(main())

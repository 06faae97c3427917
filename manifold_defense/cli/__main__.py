"""``python -m manifold_defense.cli``: the command line."""

import sys

from manifold_defense.cli import main

sys.exit(main())

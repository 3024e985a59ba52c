"""``python -m suite`` is ``clsuite``."""
import sys

from suite.cli import main

sys.exit(main())

"""``python -m sumofparts.cli ...``: the ``sop`` command."""
import sys

from .main import main

sys.exit(main())

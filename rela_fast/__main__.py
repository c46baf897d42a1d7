"""``python -m rela_fast`` is ``rela-fast``."""

import sys

from rela_fast.cli import main

sys.exit(main())

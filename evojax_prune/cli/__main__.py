"""``python -m evojax_prune.cli``: the ``evojax-prune`` command."""

import sys

from evojax_prune.cli.main import main

sys.exit(main())

"""``python -m dataset ...``: the dataset command-line tools (``dataset.cli``)."""

import sys

from dataset.cli import main

sys.exit(main())

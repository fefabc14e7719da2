"""``python -m teleop.dataset ...``: the former name of ``python -m dataset ...`` (``dataset.cli``), kept so that
existing scripts and habits keep working."""

import sys

from dataset.cli import main

if __name__ == "__main__":
    sys.exit(main())

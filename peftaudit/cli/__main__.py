"""`python -m peftaudit.cli ...`: the same as the `peftaudit` command."""

import sys

from peftaudit.cli import main

sys.exit(main())

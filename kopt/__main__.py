"""`python -m kopt ...` is the `kopt` command."""

import sys

from kopt.cli import main

sys.exit(main())

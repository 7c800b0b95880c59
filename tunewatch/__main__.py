"""`python -m tunewatch` is the same as the `tunewatch` command."""

import sys

from tunewatch.cli import main

sys.exit(main())

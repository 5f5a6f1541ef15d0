"""`python -m fanwise.cli ...`: the `fanwise` command (what a Ray job's driver runs)."""

import sys

from fanwise.cli.main import main

sys.exit(main())

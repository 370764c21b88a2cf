"""``python -m regtorch``: the ``regtorch`` command line."""

from regtorch.cli import main

raise SystemExit(main())

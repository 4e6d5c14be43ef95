"""``python -m explorer``: the same as the ``periscope`` command."""

from explorer.cli import main

raise SystemExit(main())

"""``python -m lunglens`` is the same as the ``lunglens`` command."""

from lunglens.cli import main

raise SystemExit(main())

"""``python -m wshub``: the same as the ``wshub`` command."""

from .cli import main

raise SystemExit(main())

"""``python -m densflow``: see :mod:`densflow.cli`."""

from .cli import main

raise SystemExit(main())

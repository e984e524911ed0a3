"""``python -m proxy`` does what the ``tokenproxy`` console script does."""

from proxy.cli import main

raise SystemExit(main())

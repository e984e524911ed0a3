"""``python -m proxy`` does what the ``tokenproxy`` console script does."""

from proxy.launch import main

raise SystemExit(main())

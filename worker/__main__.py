"""`python -m worker` is the same program as `creditwatch`."""

from worker.cli import main

raise SystemExit(main())

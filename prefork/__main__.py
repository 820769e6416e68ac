"""``python -m prefork`` runs the command line."""

from __future__ import annotations

from prefork.cli import main

raise SystemExit(main())

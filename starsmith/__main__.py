"""``python -m starsmith`` runs the CLI (used by tests and by workers started from a venv)."""

from starsmith.cli import main

main()

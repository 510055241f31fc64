"""``python -m oblix_core`` runs the ``oblix`` command line."""

from oblix_core.cli import main

main()

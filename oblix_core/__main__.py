"""``python -m oblix_core`` runs the ``oblix`` command line."""

from oblix_core.cli.main import main

main()

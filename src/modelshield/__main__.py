"""``python -m modelshield`` runs the command line."""

from modelshield.cli import main

main()

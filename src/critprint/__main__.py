"""Allow ``python -m critprint``."""

from critprint.cli import main

main()

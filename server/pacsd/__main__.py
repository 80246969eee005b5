"""`python -m pacsd` is the `pacsd` command."""

from pacsd.cli import main

main()

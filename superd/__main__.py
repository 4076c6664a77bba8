"""`python -m superd` runs the command-line interface."""

from superd.cli import main

main()

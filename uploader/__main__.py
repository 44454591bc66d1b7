"""`python -m uploader` runs the command-line interface."""

from uploader.cli.commands import main

main()

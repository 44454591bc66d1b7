"""`python -m uploader` runs the command-line interface."""

from uploader.cli import entry

entry()

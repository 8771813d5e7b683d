"""`python -m twintrack` is the `twintrack` command."""

from twintrack.entrypoints.cli.main import app

app()

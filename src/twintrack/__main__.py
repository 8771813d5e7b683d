"""`python -m twintrack` is the `twintrack` command."""

from twintrack.cli import app

app()

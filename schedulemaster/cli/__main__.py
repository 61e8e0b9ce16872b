"""`python -m schedulemaster.cli`: the `schedulemaster` command."""

from schedulemaster.cli.main import app

app()

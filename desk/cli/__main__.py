"""``python -m desk.cli`` is the ``desk`` command."""

from desk.cli.main import app

app(prog_name="desk")

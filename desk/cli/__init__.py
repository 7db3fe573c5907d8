"""The ``desk`` command: run the embedded desk, control strategies, read the books."""

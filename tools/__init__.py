"""Repository tools (not installed with the desk): ``python -m tools.<name>``."""

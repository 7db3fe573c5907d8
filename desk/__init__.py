"""Quant Desk. ``desk.v1`` is the generated wire (protobuf), ``desk.bus`` the shared bus package,
``desk.cli`` the ``desk`` command. Importing ``desk`` itself pulls in nothing."""

__version__ = "0.1.0"

"""Where strategies run: ``process`` (a local subprocess) now, ``docker`` later."""

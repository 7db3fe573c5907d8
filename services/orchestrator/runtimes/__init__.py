"""Where strategies run: ``process`` (a local subprocess, under bubblewrap when it is usable:
:mod:`.process`) or ``docker`` (a container of its own: :mod:`.docker`), both behind
:class:`.base.Runtime`."""

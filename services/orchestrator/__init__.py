"""Strategy lifecycle: discover strategies on disk, deploy them (spec to KV ``DESK_STRATEGIES``),
run them through a runtime (``process``: local processes, sandboxed with bubblewrap when it is
usable, the embedded default; ``docker``: one hardened container each, the compose default),
restart crashes with backoff, and answer ``desk.ctl.strategy.*``."""

"""Strategy lifecycle: discover strategies on disk, deploy them (spec to KV ``DESK_STRATEGIES``),
run them through a runtime (``process`` now, ``docker`` later), restart crashes with backoff, and
answer ``desk.ctl.strategy.*``."""

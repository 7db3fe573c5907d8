"""Market data in: the ``synthetic`` (seeded random walk) and ``replay`` (CSV bars) feeds, published
on ``md.bar|quote|trade.<SYMBOL>``, with the last trade per symbol kept in KV ``DESK_PRICES``."""

"""``make bench``: the desk's speed beside the bare NATS / SQLite limits it is built on.

Every desk figure is measured in the same run, on the same machine, as its bare counterpart and
printed as a ratio, so results from noisy machines can be compared. Run ``python -m bench`` (about
five minutes) or ``python -m bench --quick`` (a smoke run, well under a minute).
"""

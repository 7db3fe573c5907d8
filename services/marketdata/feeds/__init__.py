"""Market data feeds: pure generators of bars, quotes and trades; the service owns the timer."""

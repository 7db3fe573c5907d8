"""Backtest analytics: :mod:`desk.backtest.metrics` (pure statistics of fills, an equity curve and
benchmark prices) and :mod:`desk.backtest.report` (one self-contained HTML file, a terminal table,
JSON). Input is plain typed data (:class:`~desk.backtest.metrics.BacktestData`), so a backtester fills
it without depending on this package's internals. Importing ``desk.backtest`` itself pulls in nothing."""

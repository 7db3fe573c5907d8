"""Historical bars for backtests and replays: file loaders (:mod:`desk.data.loaders`), the local
Alpaca cache and its fetcher (:mod:`desk.data.cache`, :mod:`desk.data.fetch`)."""

from desk.data.loaders import BarData, BarFileError, LoadReport, detect, load, load_many, parse_lines

__all__ = ["BarData", "BarFileError", "LoadReport", "detect", "load", "load_many", "parse_lines"]

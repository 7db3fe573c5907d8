"""The Quant Desk strategy SDK: write a :class:`Strategy`, run it with ``python -m strategy_sdk run``.

Depends only on nats-py, protobuf, the generated wire (``desk.v1``) and the pure bus modules
(``desk.bus.subjects``, ``codec``, ``errors``, ``decimals``, ``request``). Backtests for unit tests
live in :mod:`strategy_sdk.testing`.
"""

from strategy_sdk.client import SDK_VERSION
from strategy_sdk.models import Bar, CancelResult, Fill, OpenOrder, OrderResult, OrderUpdate, Quote, Trade
from strategy_sdk.runner import run_strategy
from strategy_sdk.strategy import Strategy

__version__ = SDK_VERSION

__all__ = [
    "Bar",
    "CancelResult",
    "Fill",
    "OpenOrder",
    "OrderResult",
    "OrderUpdate",
    "Quote",
    "Strategy",
    "Trade",
    "__version__",
    "run_strategy",
]

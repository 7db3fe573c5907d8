from desk.v1 import common_pb2 as _common_pb2
from desk.v1 import executions_pb2 as _executions_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LedgerQuery(_message.Message):
    __slots__ = ("strategy_id", "member_id", "symbol", "limit", "since_ns")
    STRATEGY_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    SINCE_NS_FIELD_NUMBER: _ClassVar[int]
    strategy_id: str
    member_id: str
    symbol: str
    limit: int
    since_ns: int
    def __init__(self, strategy_id: _Optional[str] = ..., member_id: _Optional[str] = ..., symbol: _Optional[str] = ..., limit: _Optional[int] = ..., since_ns: _Optional[int] = ...) -> None: ...

class Position(_message.Message):
    __slots__ = ("strategy_id", "member_id", "symbol", "qty", "avg_cost", "cost_basis", "last_price", "market_value", "realized_pnl", "unrealized_pnl", "updated_ns")
    STRATEGY_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    QTY_FIELD_NUMBER: _ClassVar[int]
    AVG_COST_FIELD_NUMBER: _ClassVar[int]
    COST_BASIS_FIELD_NUMBER: _ClassVar[int]
    LAST_PRICE_FIELD_NUMBER: _ClassVar[int]
    MARKET_VALUE_FIELD_NUMBER: _ClassVar[int]
    REALIZED_PNL_FIELD_NUMBER: _ClassVar[int]
    UNREALIZED_PNL_FIELD_NUMBER: _ClassVar[int]
    UPDATED_NS_FIELD_NUMBER: _ClassVar[int]
    strategy_id: str
    member_id: str
    symbol: str
    qty: str
    avg_cost: str
    cost_basis: str
    last_price: str
    market_value: str
    realized_pnl: str
    unrealized_pnl: str
    updated_ns: int
    def __init__(self, strategy_id: _Optional[str] = ..., member_id: _Optional[str] = ..., symbol: _Optional[str] = ..., qty: _Optional[str] = ..., avg_cost: _Optional[str] = ..., cost_basis: _Optional[str] = ..., last_price: _Optional[str] = ..., market_value: _Optional[str] = ..., realized_pnl: _Optional[str] = ..., unrealized_pnl: _Optional[str] = ..., updated_ns: _Optional[int] = ...) -> None: ...

class PositionsReply(_message.Message):
    __slots__ = ("positions",)
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    positions: _containers.RepeatedCompositeFieldContainer[Position]
    def __init__(self, positions: _Optional[_Iterable[_Union[Position, _Mapping]]] = ...) -> None: ...

class OrderRecord(_message.Message):
    __slots__ = ("order_id", "client_order_id", "strategy_id", "member_id", "symbol", "side", "type", "time_in_force", "qty", "limit_price", "stop_price", "status", "filled_qty", "avg_price", "venue", "text", "created_ns", "updated_ns", "notional")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TIME_IN_FORCE_FIELD_NUMBER: _ClassVar[int]
    QTY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    STOP_PRICE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FILLED_QTY_FIELD_NUMBER: _ClassVar[int]
    AVG_PRICE_FIELD_NUMBER: _ClassVar[int]
    VENUE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CREATED_NS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_NS_FIELD_NUMBER: _ClassVar[int]
    NOTIONAL_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    client_order_id: str
    strategy_id: str
    member_id: str
    symbol: str
    side: _common_pb2.Side
    type: _common_pb2.OrderType
    time_in_force: _common_pb2.TimeInForce
    qty: str
    limit_price: str
    stop_price: str
    status: _executions_pb2.OrderStatus
    filled_qty: str
    avg_price: str
    venue: str
    text: str
    created_ns: int
    updated_ns: int
    notional: str
    def __init__(self, order_id: _Optional[str] = ..., client_order_id: _Optional[str] = ..., strategy_id: _Optional[str] = ..., member_id: _Optional[str] = ..., symbol: _Optional[str] = ..., side: _Optional[_Union[_common_pb2.Side, str]] = ..., type: _Optional[_Union[_common_pb2.OrderType, str]] = ..., time_in_force: _Optional[_Union[_common_pb2.TimeInForce, str]] = ..., qty: _Optional[str] = ..., limit_price: _Optional[str] = ..., stop_price: _Optional[str] = ..., status: _Optional[_Union[_executions_pb2.OrderStatus, str]] = ..., filled_qty: _Optional[str] = ..., avg_price: _Optional[str] = ..., venue: _Optional[str] = ..., text: _Optional[str] = ..., created_ns: _Optional[int] = ..., updated_ns: _Optional[int] = ..., notional: _Optional[str] = ...) -> None: ...

class OrdersReply(_message.Message):
    __slots__ = ("orders",)
    ORDERS_FIELD_NUMBER: _ClassVar[int]
    orders: _containers.RepeatedCompositeFieldContainer[OrderRecord]
    def __init__(self, orders: _Optional[_Iterable[_Union[OrderRecord, _Mapping]]] = ...) -> None: ...

class Fill(_message.Message):
    __slots__ = ("execution_id", "order_id", "client_order_id", "strategy_id", "member_id", "symbol", "side", "qty", "price", "fee", "venue", "event_ns")
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    QTY_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    FEE_FIELD_NUMBER: _ClassVar[int]
    VENUE_FIELD_NUMBER: _ClassVar[int]
    EVENT_NS_FIELD_NUMBER: _ClassVar[int]
    execution_id: str
    order_id: str
    client_order_id: str
    strategy_id: str
    member_id: str
    symbol: str
    side: _common_pb2.Side
    qty: str
    price: str
    fee: str
    venue: str
    event_ns: int
    def __init__(self, execution_id: _Optional[str] = ..., order_id: _Optional[str] = ..., client_order_id: _Optional[str] = ..., strategy_id: _Optional[str] = ..., member_id: _Optional[str] = ..., symbol: _Optional[str] = ..., side: _Optional[_Union[_common_pb2.Side, str]] = ..., qty: _Optional[str] = ..., price: _Optional[str] = ..., fee: _Optional[str] = ..., venue: _Optional[str] = ..., event_ns: _Optional[int] = ...) -> None: ...

class FillsReply(_message.Message):
    __slots__ = ("fills",)
    FILLS_FIELD_NUMBER: _ClassVar[int]
    fills: _containers.RepeatedCompositeFieldContainer[Fill]
    def __init__(self, fills: _Optional[_Iterable[_Union[Fill, _Mapping]]] = ...) -> None: ...

class PnlRow(_message.Message):
    __slots__ = ("strategy_id", "member_id", "initial_cash", "cash", "market_value", "equity", "realized_pnl", "unrealized_pnl", "fees", "total_pnl", "return_pct", "fills")
    STRATEGY_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    INITIAL_CASH_FIELD_NUMBER: _ClassVar[int]
    CASH_FIELD_NUMBER: _ClassVar[int]
    MARKET_VALUE_FIELD_NUMBER: _ClassVar[int]
    EQUITY_FIELD_NUMBER: _ClassVar[int]
    REALIZED_PNL_FIELD_NUMBER: _ClassVar[int]
    UNREALIZED_PNL_FIELD_NUMBER: _ClassVar[int]
    FEES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PNL_FIELD_NUMBER: _ClassVar[int]
    RETURN_PCT_FIELD_NUMBER: _ClassVar[int]
    FILLS_FIELD_NUMBER: _ClassVar[int]
    strategy_id: str
    member_id: str
    initial_cash: str
    cash: str
    market_value: str
    equity: str
    realized_pnl: str
    unrealized_pnl: str
    fees: str
    total_pnl: str
    return_pct: str
    fills: int
    def __init__(self, strategy_id: _Optional[str] = ..., member_id: _Optional[str] = ..., initial_cash: _Optional[str] = ..., cash: _Optional[str] = ..., market_value: _Optional[str] = ..., equity: _Optional[str] = ..., realized_pnl: _Optional[str] = ..., unrealized_pnl: _Optional[str] = ..., fees: _Optional[str] = ..., total_pnl: _Optional[str] = ..., return_pct: _Optional[str] = ..., fills: _Optional[int] = ...) -> None: ...

class PnlReply(_message.Message):
    __slots__ = ("strategies", "members")
    STRATEGIES_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    strategies: _containers.RepeatedCompositeFieldContainer[PnlRow]
    members: _containers.RepeatedCompositeFieldContainer[PnlRow]
    def __init__(self, strategies: _Optional[_Iterable[_Union[PnlRow, _Mapping]]] = ..., members: _Optional[_Iterable[_Union[PnlRow, _Mapping]]] = ...) -> None: ...

class LeaderboardRow(_message.Message):
    __slots__ = ("rank", "member_id", "equity", "total_pnl", "return_pct", "strategies", "fills")
    RANK_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    EQUITY_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PNL_FIELD_NUMBER: _ClassVar[int]
    RETURN_PCT_FIELD_NUMBER: _ClassVar[int]
    STRATEGIES_FIELD_NUMBER: _ClassVar[int]
    FILLS_FIELD_NUMBER: _ClassVar[int]
    rank: int
    member_id: str
    equity: str
    total_pnl: str
    return_pct: str
    strategies: int
    fills: int
    def __init__(self, rank: _Optional[int] = ..., member_id: _Optional[str] = ..., equity: _Optional[str] = ..., total_pnl: _Optional[str] = ..., return_pct: _Optional[str] = ..., strategies: _Optional[int] = ..., fills: _Optional[int] = ...) -> None: ...

class LeaderboardReply(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[LeaderboardRow]
    def __init__(self, rows: _Optional[_Iterable[_Union[LeaderboardRow, _Mapping]]] = ...) -> None: ...

class EquityPoint(_message.Message):
    __slots__ = ("strategy_id", "member_id", "ts_ns", "equity", "cash", "realized_pnl", "unrealized_pnl")
    STRATEGY_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    TS_NS_FIELD_NUMBER: _ClassVar[int]
    EQUITY_FIELD_NUMBER: _ClassVar[int]
    CASH_FIELD_NUMBER: _ClassVar[int]
    REALIZED_PNL_FIELD_NUMBER: _ClassVar[int]
    UNREALIZED_PNL_FIELD_NUMBER: _ClassVar[int]
    strategy_id: str
    member_id: str
    ts_ns: int
    equity: str
    cash: str
    realized_pnl: str
    unrealized_pnl: str
    def __init__(self, strategy_id: _Optional[str] = ..., member_id: _Optional[str] = ..., ts_ns: _Optional[int] = ..., equity: _Optional[str] = ..., cash: _Optional[str] = ..., realized_pnl: _Optional[str] = ..., unrealized_pnl: _Optional[str] = ...) -> None: ...

class EquityReply(_message.Message):
    __slots__ = ("points",)
    POINTS_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[EquityPoint]
    def __init__(self, points: _Optional[_Iterable[_Union[EquityPoint, _Mapping]]] = ...) -> None: ...

from desk.v1 import common_pb2 as _common_pb2
from desk.v1 import orders_pb2 as _orders_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExecType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXEC_TYPE_UNSPECIFIED: _ClassVar[ExecType]
    EXEC_TYPE_NEW: _ClassVar[ExecType]
    EXEC_TYPE_PARTIAL_FILL: _ClassVar[ExecType]
    EXEC_TYPE_FILL: _ClassVar[ExecType]
    EXEC_TYPE_CANCELED: _ClassVar[ExecType]
    EXEC_TYPE_EXPIRED: _ClassVar[ExecType]
    EXEC_TYPE_REJECTED: _ClassVar[ExecType]
    EXEC_TYPE_CANCEL_REJECTED: _ClassVar[ExecType]

class OrderStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ORDER_STATUS_UNSPECIFIED: _ClassVar[OrderStatus]
    ORDER_STATUS_NEW: _ClassVar[OrderStatus]
    ORDER_STATUS_PARTIALLY_FILLED: _ClassVar[OrderStatus]
    ORDER_STATUS_FILLED: _ClassVar[OrderStatus]
    ORDER_STATUS_CANCELED: _ClassVar[OrderStatus]
    ORDER_STATUS_EXPIRED: _ClassVar[OrderStatus]
    ORDER_STATUS_REJECTED: _ClassVar[OrderStatus]
EXEC_TYPE_UNSPECIFIED: ExecType
EXEC_TYPE_NEW: ExecType
EXEC_TYPE_PARTIAL_FILL: ExecType
EXEC_TYPE_FILL: ExecType
EXEC_TYPE_CANCELED: ExecType
EXEC_TYPE_EXPIRED: ExecType
EXEC_TYPE_REJECTED: ExecType
EXEC_TYPE_CANCEL_REJECTED: ExecType
ORDER_STATUS_UNSPECIFIED: OrderStatus
ORDER_STATUS_NEW: OrderStatus
ORDER_STATUS_PARTIALLY_FILLED: OrderStatus
ORDER_STATUS_FILLED: OrderStatus
ORDER_STATUS_CANCELED: OrderStatus
ORDER_STATUS_EXPIRED: OrderStatus
ORDER_STATUS_REJECTED: OrderStatus

class ExecutionReport(_message.Message):
    __slots__ = ("execution_id", "order_id", "client_order_id", "venue_order_id", "strategy_id", "member_id", "exec_type", "status", "symbol", "side", "type", "time_in_force", "order_qty", "limit_price", "stop_price", "fill_qty", "fill_price", "cum_qty", "avg_price", "leaves_qty", "fee", "venue", "text", "event_ns", "report_ns", "notional", "trail_price", "trail_percent", "hwm", "replaces", "parent_order_id", "order_class", "take_profit_limit_price", "stop_loss_stop_price", "stop_loss_limit_price")
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    VENUE_ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TIME_IN_FORCE_FIELD_NUMBER: _ClassVar[int]
    ORDER_QTY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    STOP_PRICE_FIELD_NUMBER: _ClassVar[int]
    FILL_QTY_FIELD_NUMBER: _ClassVar[int]
    FILL_PRICE_FIELD_NUMBER: _ClassVar[int]
    CUM_QTY_FIELD_NUMBER: _ClassVar[int]
    AVG_PRICE_FIELD_NUMBER: _ClassVar[int]
    LEAVES_QTY_FIELD_NUMBER: _ClassVar[int]
    FEE_FIELD_NUMBER: _ClassVar[int]
    VENUE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    EVENT_NS_FIELD_NUMBER: _ClassVar[int]
    REPORT_NS_FIELD_NUMBER: _ClassVar[int]
    NOTIONAL_FIELD_NUMBER: _ClassVar[int]
    TRAIL_PRICE_FIELD_NUMBER: _ClassVar[int]
    TRAIL_PERCENT_FIELD_NUMBER: _ClassVar[int]
    HWM_FIELD_NUMBER: _ClassVar[int]
    REPLACES_FIELD_NUMBER: _ClassVar[int]
    PARENT_ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_CLASS_FIELD_NUMBER: _ClassVar[int]
    TAKE_PROFIT_LIMIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    STOP_LOSS_STOP_PRICE_FIELD_NUMBER: _ClassVar[int]
    STOP_LOSS_LIMIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    execution_id: str
    order_id: str
    client_order_id: str
    venue_order_id: str
    strategy_id: str
    member_id: str
    exec_type: ExecType
    status: OrderStatus
    symbol: str
    side: _common_pb2.Side
    type: _common_pb2.OrderType
    time_in_force: _common_pb2.TimeInForce
    order_qty: str
    limit_price: str
    stop_price: str
    fill_qty: str
    fill_price: str
    cum_qty: str
    avg_price: str
    leaves_qty: str
    fee: str
    venue: str
    text: str
    event_ns: int
    report_ns: int
    notional: str
    trail_price: str
    trail_percent: str
    hwm: str
    replaces: str
    parent_order_id: str
    order_class: _orders_pb2.OrderClass
    take_profit_limit_price: str
    stop_loss_stop_price: str
    stop_loss_limit_price: str
    def __init__(self, execution_id: _Optional[str] = ..., order_id: _Optional[str] = ..., client_order_id: _Optional[str] = ..., venue_order_id: _Optional[str] = ..., strategy_id: _Optional[str] = ..., member_id: _Optional[str] = ..., exec_type: _Optional[_Union[ExecType, str]] = ..., status: _Optional[_Union[OrderStatus, str]] = ..., symbol: _Optional[str] = ..., side: _Optional[_Union[_common_pb2.Side, str]] = ..., type: _Optional[_Union[_common_pb2.OrderType, str]] = ..., time_in_force: _Optional[_Union[_common_pb2.TimeInForce, str]] = ..., order_qty: _Optional[str] = ..., limit_price: _Optional[str] = ..., stop_price: _Optional[str] = ..., fill_qty: _Optional[str] = ..., fill_price: _Optional[str] = ..., cum_qty: _Optional[str] = ..., avg_price: _Optional[str] = ..., leaves_qty: _Optional[str] = ..., fee: _Optional[str] = ..., venue: _Optional[str] = ..., text: _Optional[str] = ..., event_ns: _Optional[int] = ..., report_ns: _Optional[int] = ..., notional: _Optional[str] = ..., trail_price: _Optional[str] = ..., trail_percent: _Optional[str] = ..., hwm: _Optional[str] = ..., replaces: _Optional[str] = ..., parent_order_id: _Optional[str] = ..., order_class: _Optional[_Union[_orders_pb2.OrderClass, str]] = ..., take_profit_limit_price: _Optional[str] = ..., stop_loss_stop_price: _Optional[str] = ..., stop_loss_limit_price: _Optional[str] = ...) -> None: ...

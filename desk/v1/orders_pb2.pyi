from desk.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OrderClass(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ORDER_CLASS_UNSPECIFIED: _ClassVar[OrderClass]
    ORDER_CLASS_BRACKET: _ClassVar[OrderClass]
    ORDER_CLASS_OCO: _ClassVar[OrderClass]
    ORDER_CLASS_OTO: _ClassVar[OrderClass]

class RejectReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REJECT_REASON_UNSPECIFIED: _ClassVar[RejectReason]
    REJECT_REASON_MALFORMED: _ClassVar[RejectReason]
    REJECT_REASON_INVALID_FIELD: _ClassVar[RejectReason]
    REJECT_REASON_WRONG_SUBJECT: _ClassVar[RejectReason]
    REJECT_REASON_UNKNOWN_SYMBOL: _ClassVar[RejectReason]
    REJECT_REASON_UNKNOWN_STRATEGY: _ClassVar[RejectReason]
    REJECT_REASON_HALTED: _ClassVar[RejectReason]
    REJECT_REASON_MAX_ORDER_NOTIONAL: _ClassVar[RejectReason]
    REJECT_REASON_MAX_POSITION_NOTIONAL: _ClassVar[RejectReason]
    REJECT_REASON_RATE_LIMIT: _ClassVar[RejectReason]
    REJECT_REASON_INSUFFICIENT_BUYING_POWER: _ClassVar[RejectReason]
    REJECT_REASON_SHORT_NOT_ALLOWED: _ClassVar[RejectReason]
    REJECT_REASON_PAYLOAD_TOO_LARGE: _ClassVar[RejectReason]
    REJECT_REASON_NO_MARKET_PRICE: _ClassVar[RejectReason]
    REJECT_REASON_UNKNOWN_ORDER: _ClassVar[RejectReason]
    REJECT_REASON_ORDER_CLOSED: _ClassVar[RejectReason]
    REJECT_REASON_INTERNAL: _ClassVar[RejectReason]
    REJECT_REASON_VENUE_UNAVAILABLE: _ClassVar[RejectReason]
ORDER_CLASS_UNSPECIFIED: OrderClass
ORDER_CLASS_BRACKET: OrderClass
ORDER_CLASS_OCO: OrderClass
ORDER_CLASS_OTO: OrderClass
REJECT_REASON_UNSPECIFIED: RejectReason
REJECT_REASON_MALFORMED: RejectReason
REJECT_REASON_INVALID_FIELD: RejectReason
REJECT_REASON_WRONG_SUBJECT: RejectReason
REJECT_REASON_UNKNOWN_SYMBOL: RejectReason
REJECT_REASON_UNKNOWN_STRATEGY: RejectReason
REJECT_REASON_HALTED: RejectReason
REJECT_REASON_MAX_ORDER_NOTIONAL: RejectReason
REJECT_REASON_MAX_POSITION_NOTIONAL: RejectReason
REJECT_REASON_RATE_LIMIT: RejectReason
REJECT_REASON_INSUFFICIENT_BUYING_POWER: RejectReason
REJECT_REASON_SHORT_NOT_ALLOWED: RejectReason
REJECT_REASON_PAYLOAD_TOO_LARGE: RejectReason
REJECT_REASON_NO_MARKET_PRICE: RejectReason
REJECT_REASON_UNKNOWN_ORDER: RejectReason
REJECT_REASON_ORDER_CLOSED: RejectReason
REJECT_REASON_INTERNAL: RejectReason
REJECT_REASON_VENUE_UNAVAILABLE: RejectReason

class OrderRequest(_message.Message):
    __slots__ = ("strategy_id", "client_order_id", "symbol", "side", "type", "time_in_force", "qty", "notional", "limit_price", "stop_price", "extended_hours", "trail_price", "trail_percent", "replaces", "order_class", "take_profit_limit_price", "stop_loss_stop_price", "stop_loss_limit_price")
    STRATEGY_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TIME_IN_FORCE_FIELD_NUMBER: _ClassVar[int]
    QTY_FIELD_NUMBER: _ClassVar[int]
    NOTIONAL_FIELD_NUMBER: _ClassVar[int]
    LIMIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    STOP_PRICE_FIELD_NUMBER: _ClassVar[int]
    EXTENDED_HOURS_FIELD_NUMBER: _ClassVar[int]
    TRAIL_PRICE_FIELD_NUMBER: _ClassVar[int]
    TRAIL_PERCENT_FIELD_NUMBER: _ClassVar[int]
    REPLACES_FIELD_NUMBER: _ClassVar[int]
    ORDER_CLASS_FIELD_NUMBER: _ClassVar[int]
    TAKE_PROFIT_LIMIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    STOP_LOSS_STOP_PRICE_FIELD_NUMBER: _ClassVar[int]
    STOP_LOSS_LIMIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    strategy_id: str
    client_order_id: str
    symbol: str
    side: _common_pb2.Side
    type: _common_pb2.OrderType
    time_in_force: _common_pb2.TimeInForce
    qty: str
    notional: str
    limit_price: str
    stop_price: str
    extended_hours: bool
    trail_price: str
    trail_percent: str
    replaces: str
    order_class: OrderClass
    take_profit_limit_price: str
    stop_loss_stop_price: str
    stop_loss_limit_price: str
    def __init__(self, strategy_id: _Optional[str] = ..., client_order_id: _Optional[str] = ..., symbol: _Optional[str] = ..., side: _Optional[_Union[_common_pb2.Side, str]] = ..., type: _Optional[_Union[_common_pb2.OrderType, str]] = ..., time_in_force: _Optional[_Union[_common_pb2.TimeInForce, str]] = ..., qty: _Optional[str] = ..., notional: _Optional[str] = ..., limit_price: _Optional[str] = ..., stop_price: _Optional[str] = ..., extended_hours: _Optional[bool] = ..., trail_price: _Optional[str] = ..., trail_percent: _Optional[str] = ..., replaces: _Optional[str] = ..., order_class: _Optional[_Union[OrderClass, str]] = ..., take_profit_limit_price: _Optional[str] = ..., stop_loss_stop_price: _Optional[str] = ..., stop_loss_limit_price: _Optional[str] = ...) -> None: ...

class OrderAck(_message.Message):
    __slots__ = ("strategy_id", "client_order_id", "order_id", "accepted", "reason", "message", "duplicate", "ts_ns")
    STRATEGY_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    TS_NS_FIELD_NUMBER: _ClassVar[int]
    strategy_id: str
    client_order_id: str
    order_id: str
    accepted: bool
    reason: RejectReason
    message: str
    duplicate: bool
    ts_ns: int
    def __init__(self, strategy_id: _Optional[str] = ..., client_order_id: _Optional[str] = ..., order_id: _Optional[str] = ..., accepted: _Optional[bool] = ..., reason: _Optional[_Union[RejectReason, str]] = ..., message: _Optional[str] = ..., duplicate: _Optional[bool] = ..., ts_ns: _Optional[int] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("strategy_id", "client_order_id")
    STRATEGY_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    strategy_id: str
    client_order_id: str
    def __init__(self, strategy_id: _Optional[str] = ..., client_order_id: _Optional[str] = ...) -> None: ...

class CancelAck(_message.Message):
    __slots__ = ("strategy_id", "client_order_id", "order_id", "accepted", "reason", "message", "ts_ns")
    STRATEGY_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TS_NS_FIELD_NUMBER: _ClassVar[int]
    strategy_id: str
    client_order_id: str
    order_id: str
    accepted: bool
    reason: RejectReason
    message: str
    ts_ns: int
    def __init__(self, strategy_id: _Optional[str] = ..., client_order_id: _Optional[str] = ..., order_id: _Optional[str] = ..., accepted: _Optional[bool] = ..., reason: _Optional[_Union[RejectReason, str]] = ..., message: _Optional[str] = ..., ts_ns: _Optional[int] = ...) -> None: ...

class RoutedOrder(_message.Message):
    __slots__ = ("order_id", "strategy_id", "member_id", "routed_ns", "new_order", "cancel")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    ROUTED_NS_FIELD_NUMBER: _ClassVar[int]
    NEW_ORDER_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    strategy_id: str
    member_id: str
    routed_ns: int
    new_order: OrderRequest
    cancel: CancelRequest
    def __init__(self, order_id: _Optional[str] = ..., strategy_id: _Optional[str] = ..., member_id: _Optional[str] = ..., routed_ns: _Optional[int] = ..., new_order: _Optional[_Union[OrderRequest, _Mapping]] = ..., cancel: _Optional[_Union[CancelRequest, _Mapping]] = ...) -> None: ...

class HaltRequest(_message.Message):
    __slots__ = ("strategy_id", "reason", "requested_by")
    STRATEGY_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    strategy_id: str
    reason: str
    requested_by: str
    def __init__(self, strategy_id: _Optional[str] = ..., reason: _Optional[str] = ..., requested_by: _Optional[str] = ...) -> None: ...

class HaltAck(_message.Message):
    __slots__ = ("global_halted", "halted_strategies", "message")
    GLOBAL_HALTED_FIELD_NUMBER: _ClassVar[int]
    HALTED_STRATEGIES_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    global_halted: bool
    halted_strategies: _containers.RepeatedScalarFieldContainer[str]
    message: str
    def __init__(self, global_halted: _Optional[bool] = ..., halted_strategies: _Optional[_Iterable[str]] = ..., message: _Optional[str] = ...) -> None: ...

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Bar(_message.Message):
    __slots__ = ("symbol", "open", "high", "low", "close", "volume", "start_ns", "interval_ns", "vwap", "trade_count", "source")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    START_NS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_NS_FIELD_NUMBER: _ClassVar[int]
    VWAP_FIELD_NUMBER: _ClassVar[int]
    TRADE_COUNT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    open: str
    high: str
    low: str
    close: str
    volume: str
    start_ns: int
    interval_ns: int
    vwap: str
    trade_count: int
    source: str
    def __init__(self, symbol: _Optional[str] = ..., open: _Optional[str] = ..., high: _Optional[str] = ..., low: _Optional[str] = ..., close: _Optional[str] = ..., volume: _Optional[str] = ..., start_ns: _Optional[int] = ..., interval_ns: _Optional[int] = ..., vwap: _Optional[str] = ..., trade_count: _Optional[int] = ..., source: _Optional[str] = ...) -> None: ...

class Trade(_message.Message):
    __slots__ = ("symbol", "price", "size", "ts_ns", "source")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    TS_NS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    price: str
    size: str
    ts_ns: int
    source: str
    def __init__(self, symbol: _Optional[str] = ..., price: _Optional[str] = ..., size: _Optional[str] = ..., ts_ns: _Optional[int] = ..., source: _Optional[str] = ...) -> None: ...

class Quote(_message.Message):
    __slots__ = ("symbol", "bid_price", "bid_size", "ask_price", "ask_size", "ts_ns", "source")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    BID_PRICE_FIELD_NUMBER: _ClassVar[int]
    BID_SIZE_FIELD_NUMBER: _ClassVar[int]
    ASK_PRICE_FIELD_NUMBER: _ClassVar[int]
    ASK_SIZE_FIELD_NUMBER: _ClassVar[int]
    TS_NS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    bid_price: str
    bid_size: str
    ask_price: str
    ask_size: str
    ts_ns: int
    source: str
    def __init__(self, symbol: _Optional[str] = ..., bid_price: _Optional[str] = ..., bid_size: _Optional[str] = ..., ask_price: _Optional[str] = ..., ask_size: _Optional[str] = ..., ts_ns: _Optional[int] = ..., source: _Optional[str] = ...) -> None: ...

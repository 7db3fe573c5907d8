from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StrategyState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STRATEGY_STATE_UNSPECIFIED: _ClassVar[StrategyState]
    STRATEGY_STATE_STOPPED: _ClassVar[StrategyState]
    STRATEGY_STATE_STARTING: _ClassVar[StrategyState]
    STRATEGY_STATE_RUNNING: _ClassVar[StrategyState]
    STRATEGY_STATE_CRASHED: _ClassVar[StrategyState]
    STRATEGY_STATE_BACKOFF: _ClassVar[StrategyState]
    STRATEGY_STATE_FAILED: _ClassVar[StrategyState]
STRATEGY_STATE_UNSPECIFIED: StrategyState
STRATEGY_STATE_STOPPED: StrategyState
STRATEGY_STATE_STARTING: StrategyState
STRATEGY_STATE_RUNNING: StrategyState
STRATEGY_STATE_CRASHED: StrategyState
STRATEGY_STATE_BACKOFF: StrategyState
STRATEGY_STATE_FAILED: StrategyState

class RiskLimits(_message.Message):
    __slots__ = ("max_order_notional", "max_position_notional", "max_orders_per_minute", "allow_short")
    MAX_ORDER_NOTIONAL_FIELD_NUMBER: _ClassVar[int]
    MAX_POSITION_NOTIONAL_FIELD_NUMBER: _ClassVar[int]
    MAX_ORDERS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    ALLOW_SHORT_FIELD_NUMBER: _ClassVar[int]
    max_order_notional: str
    max_position_notional: str
    max_orders_per_minute: int
    allow_short: bool
    def __init__(self, max_order_notional: _Optional[str] = ..., max_position_notional: _Optional[str] = ..., max_orders_per_minute: _Optional[int] = ..., allow_short: _Optional[bool] = ...) -> None: ...

class Resources(_message.Message):
    __slots__ = ("memory", "cpus", "pids")
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    PIDS_FIELD_NUMBER: _ClassVar[int]
    memory: str
    cpus: str
    pids: int
    def __init__(self, memory: _Optional[str] = ..., cpus: _Optional[str] = ..., pids: _Optional[int] = ...) -> None: ...

class StrategySpec(_message.Message):
    __slots__ = ("strategy_id", "member_id", "name", "description", "version", "env", "initial_cash", "risk", "symbols", "legacy", "path", "runtime", "resources", "site")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STRATEGY_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    INITIAL_CASH_FIELD_NUMBER: _ClassVar[int]
    RISK_FIELD_NUMBER: _ClassVar[int]
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    LEGACY_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    strategy_id: str
    member_id: str
    name: str
    description: str
    version: str
    env: _containers.ScalarMap[str, str]
    initial_cash: str
    risk: RiskLimits
    symbols: _containers.RepeatedScalarFieldContainer[str]
    legacy: bool
    path: str
    runtime: str
    resources: Resources
    site: str
    def __init__(self, strategy_id: _Optional[str] = ..., member_id: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., version: _Optional[str] = ..., env: _Optional[_Mapping[str, str]] = ..., initial_cash: _Optional[str] = ..., risk: _Optional[_Union[RiskLimits, _Mapping]] = ..., symbols: _Optional[_Iterable[str]] = ..., legacy: _Optional[bool] = ..., path: _Optional[str] = ..., runtime: _Optional[str] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., site: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("strategy_id", "ts_ns", "bars_seen", "orders_sent", "errors", "sdk_version", "last_error")
    STRATEGY_ID_FIELD_NUMBER: _ClassVar[int]
    TS_NS_FIELD_NUMBER: _ClassVar[int]
    BARS_SEEN_FIELD_NUMBER: _ClassVar[int]
    ORDERS_SENT_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    SDK_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    strategy_id: str
    ts_ns: int
    bars_seen: int
    orders_sent: int
    errors: int
    sdk_version: str
    last_error: str
    def __init__(self, strategy_id: _Optional[str] = ..., ts_ns: _Optional[int] = ..., bars_seen: _Optional[int] = ..., orders_sent: _Optional[int] = ..., errors: _Optional[int] = ..., sdk_version: _Optional[str] = ..., last_error: _Optional[str] = ...) -> None: ...

class StrategyStatus(_message.Message):
    __slots__ = ("strategy_id", "member_id", "state", "runtime", "pid", "container_id", "restarts", "last_error", "exit_code", "started_ns", "last_heartbeat_ns", "next_restart_ns", "code_version", "halted", "site")
    STRATEGY_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    STARTED_NS_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_NS_FIELD_NUMBER: _ClassVar[int]
    NEXT_RESTART_NS_FIELD_NUMBER: _ClassVar[int]
    CODE_VERSION_FIELD_NUMBER: _ClassVar[int]
    HALTED_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    strategy_id: str
    member_id: str
    state: StrategyState
    runtime: str
    pid: int
    container_id: str
    restarts: int
    last_error: str
    exit_code: int
    started_ns: int
    last_heartbeat_ns: int
    next_restart_ns: int
    code_version: int
    halted: bool
    site: str
    def __init__(self, strategy_id: _Optional[str] = ..., member_id: _Optional[str] = ..., state: _Optional[_Union[StrategyState, str]] = ..., runtime: _Optional[str] = ..., pid: _Optional[int] = ..., container_id: _Optional[str] = ..., restarts: _Optional[int] = ..., last_error: _Optional[str] = ..., exit_code: _Optional[int] = ..., started_ns: _Optional[int] = ..., last_heartbeat_ns: _Optional[int] = ..., next_restart_ns: _Optional[int] = ..., code_version: _Optional[int] = ..., halted: _Optional[bool] = ..., site: _Optional[str] = ...) -> None: ...

class StrategyControl(_message.Message):
    __slots__ = ("strategy_id",)
    STRATEGY_ID_FIELD_NUMBER: _ClassVar[int]
    strategy_id: str
    def __init__(self, strategy_id: _Optional[str] = ...) -> None: ...

class StrategyStatusList(_message.Message):
    __slots__ = ("strategies", "message", "desk_halted")
    STRATEGIES_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DESK_HALTED_FIELD_NUMBER: _ClassVar[int]
    strategies: _containers.RepeatedCompositeFieldContainer[StrategyStatus]
    message: str
    desk_halted: bool
    def __init__(self, strategies: _Optional[_Iterable[_Union[StrategyStatus, _Mapping]]] = ..., message: _Optional[str] = ..., desk_halted: _Optional[bool] = ...) -> None: ...

class StrategyList(_message.Message):
    __slots__ = ("strategies",)
    STRATEGIES_FIELD_NUMBER: _ClassVar[int]
    strategies: _containers.RepeatedCompositeFieldContainer[StrategySpec]
    def __init__(self, strategies: _Optional[_Iterable[_Union[StrategySpec, _Mapping]]] = ...) -> None: ...

class LogsRequest(_message.Message):
    __slots__ = ("strategy_id", "tail", "follow", "after", "epoch")
    STRATEGY_ID_FIELD_NUMBER: _ClassVar[int]
    TAIL_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    strategy_id: str
    tail: int
    follow: bool
    after: int
    epoch: str
    def __init__(self, strategy_id: _Optional[str] = ..., tail: _Optional[int] = ..., follow: _Optional[bool] = ..., after: _Optional[int] = ..., epoch: _Optional[str] = ...) -> None: ...

class LogsReply(_message.Message):
    __slots__ = ("strategy_id", "lines", "next", "epoch", "skipped", "more")
    STRATEGY_ID_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    strategy_id: str
    lines: _containers.RepeatedScalarFieldContainer[str]
    next: int
    epoch: str
    skipped: int
    more: bool
    def __init__(self, strategy_id: _Optional[str] = ..., lines: _Optional[_Iterable[str]] = ..., next: _Optional[int] = ..., epoch: _Optional[str] = ..., skipped: _Optional[int] = ..., more: _Optional[bool] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("strategy_id", "upload_id", "offset", "data")
    STRATEGY_ID_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    strategy_id: str
    upload_id: str
    offset: int
    data: bytes
    def __init__(self, strategy_id: _Optional[str] = ..., upload_id: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadAck(_message.Message):
    __slots__ = ("upload_id", "received", "limit")
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    received: int
    limit: int
    def __init__(self, upload_id: _Optional[str] = ..., received: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class UploadCommit(_message.Message):
    __slots__ = ("strategy_id", "upload_id", "size", "sha256")
    STRATEGY_ID_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    strategy_id: str
    upload_id: str
    size: int
    sha256: str
    def __init__(self, strategy_id: _Optional[str] = ..., upload_id: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class MemberRequest(_message.Message):
    __slots__ = ("member_id", "password_hash")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_HASH_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    password_hash: str
    def __init__(self, member_id: _Optional[str] = ..., password_hash: _Optional[str] = ...) -> None: ...

class Member(_message.Message):
    __slots__ = ("member_id", "user", "strategies")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    STRATEGIES_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    user: str
    strategies: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, member_id: _Optional[str] = ..., user: _Optional[str] = ..., strategies: _Optional[_Iterable[str]] = ...) -> None: ...

class MemberList(_message.Message):
    __slots__ = ("members", "message")
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[Member]
    message: str
    def __init__(self, members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., message: _Optional[str] = ...) -> None: ...

"""Settings every service shares, read from the environment once, validated, frozen."""

from __future__ import annotations

import sys
from typing import Any, TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from desk.bus.servers import server_list


class BusSettings(BaseSettings):
    """Base of every service's settings. Environment variables are the field names upper-cased
    (``NATS_URL``, ``LOG_LEVEL``...); services add their own fields with a prefix of their own."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", env_file=None)

    nats_url: str = Field(default="nats://127.0.0.1:4222", description="NATS server URL(s), comma-separated")
    nats_user: str | None = Field(default=None, description="NATS user name, if the server wants one")
    nats_password: str | None = Field(default=None, description="NATS password")
    nats_password_file: str | None = Field(
        default=None, description="file holding the NATS password (compose: a secret on a shared volume)"
    )
    nats_creds: str | None = Field(default=None, description="path to a NATS .creds file")
    nats_tls_ca: str | None = Field(
        default=None, description="CA certificate (PEM file) to check the NATS server's TLS certificate with"
    )
    nats_tls_cert: str | None = Field(
        default=None,
        description="desk up: the NATS server's TLS certificate (PEM); with NATS_TLS_KEY, TLS on the client port",
    )
    nats_tls_key: str | None = Field(default=None, description="desk up: the NATS server's TLS private key (PEM)")
    nats_connect_timeout: float = Field(default=5.0, gt=0, description="seconds allowed for one connection attempt")
    log_level: str = Field(
        default="info", pattern=r"^(?i)(debug|info|warning|error)$", description="debug, info, warning or error"
    )
    log_format: str = Field(
        default="auto", pattern=r"^(auto|json|console)$", description="json, console, or auto (console on a terminal)"
    )
    drain_timeout: float = Field(default=10.0, gt=0, description="seconds allowed for a clean shutdown")
    event_loop: str = Field(
        default="auto",
        pattern=r"^(auto|uvloop|asyncio)$",
        description="asyncio event loop: uvloop, asyncio's own, or auto (uvloop when installed)",
    )

    service_lease: bool = Field(
        default=False,
        description="run active/standby: serve only while holding this service's lease in DESK_LEASES (a standby "
        "waits, registering and consuming nothing); off: serve at once, as a single instance",
    )
    lease_ttl: float = Field(
        default=5.0,
        ge=1.0,
        le=60.0,
        description="seconds an unrenewed lease lives: DESK_LEASES' max_age when a service creates the bucket (an "
        "existing bucket's own max_age is the TTL used); renewed every TTL/3",
    )
    service_instance: str = Field(
        default="",
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]*$",
        description="this instance's name in its lease and logs (default: <host>-<pid>); the ledger's per-instance "
        "consumer and file are named by LEDGER_INSTANCE",
    )

    @field_validator("nats_url")
    @classmethod
    def _servers_are_addresses(cls, value: str) -> str:
        server_list(value)  # ValueError naming the entry that is not a server address
        return value

    @property
    def password(self) -> str:
        """NATS_PASSWORD, else the content of NATS_PASSWORD_FILE, else ""."""
        if self.nats_password:
            return self.nats_password
        if self.nats_password_file:
            with open(self.nats_password_file, encoding="utf-8") as handle:
                return handle.read().strip()
        return ""

    @property
    def servers(self) -> list[str]:
        return server_list(self.nats_url)


S = TypeVar("S", bound=BaseSettings)


class SettingsError(SystemExit):
    """Start-up refused because of bad settings; the message lists every bad value."""


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build ``cls`` from the environment (plus ``overrides``), or exit with one line per bad value."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix") or "")
        lines = [f"invalid settings for {cls.__name__}:"]
        for error in exc.errors():
            name = ".".join(str(part) for part in error["loc"])
            lines.append(f"  {(prefix + name).upper()}={error.get('input')!r}: {error['msg']}")
        print("\n".join(lines), file=sys.stderr)
        raise SettingsError(2) from None


def settings_help(cls: type[BaseSettings]) -> str:
    """One line per environment variable of ``cls``: name, description, default."""
    lines = ["environment variables:"]
    for name, info in cls.model_fields.items():
        default = "" if info.default is None else f" (default: {info.default})"
        lines.append(f"  {name.upper():<38} {info.description or ''}{default}")
    return "\n".join(lines)


def service_settings(prog: str, description: str, cls: type[S], argv: list[str] | None = None) -> S:
    """A service's command line: ``--help`` explains it and lists its settings; the settings
    themselves come from the environment, validated (exit 2 with one line per bad value)."""
    import argparse

    argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=settings_help(cls),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).parse_args(argv)
    return load_settings(cls)

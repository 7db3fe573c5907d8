"""Dashboard settings: the shared bus settings plus DASHBOARD_* (docs/dashboard.md)."""

from __future__ import annotations

import ipaddress

from pydantic import Field, SecretStr, field_validator

from desk.bus.settings import BusSettings
from services.dashboard.auth import LoginThrottle


class Settings(BusSettings):
    """Read from the environment once, validated, frozen."""

    dashboard_host: str = Field(default="127.0.0.1", description="address the web server listens on")
    dashboard_port: int = Field(default=8080, ge=0, le=65535, description="port of the web server (0 = any free port)")
    dashboard_operator_password: SecretStr | None = Field(
        default=None,
        description="password for operator actions (kill switch, strategy start/stop); unset = actions disabled",
    )
    dashboard_secret_key: SecretStr | None = Field(
        default=None,
        description="key signing the operator session cookie; unset = a random key per process (log in again after a restart)",
    )
    dashboard_session_hours: float = Field(default=8.0, gt=0, le=24 * 30, description="hours an operator login lasts")
    dashboard_request_timeout: float = Field(
        default=3.0, gt=0, le=60, description="seconds allowed for one request to a desk service"
    )
    dashboard_price_history: int = Field(
        default=20000, ge=10, le=1_000_000, description="last trade prices kept per symbol (for benchmarks)"
    )
    dashboard_services: str = Field(
        default="marketdata,ledger,broker_gateway,order_router,orchestrator,dashboard",
        description="micro services the desk page checks with $SRV.PING / $SRV.STATS (comma-separated)",
    )
    dashboard_secure_cookie: bool = Field(
        default=False, description="mark the session cookie Secure (set when served over HTTPS)"
    )
    dashboard_login_free_attempts: int = Field(
        default=5, ge=1, le=1000, description="failed logins per client address before further attempts are delayed"
    )
    dashboard_login_window: float = Field(
        default=900.0,
        gt=0,
        le=7 * 24 * 3600,
        description="seconds after a client's latest failure (or the end of its lockout) after which its failed logins are forgotten",
    )
    dashboard_login_max_delay: float = Field(
        default=300.0,
        ge=1,
        le=24 * 3600,
        description="longest delay (seconds) between login attempts; the delay doubles from 1 s per failure",
    )
    dashboard_login_max_clients: int = Field(
        default=10_000,
        ge=1,
        le=10_000_000,
        description="client addresses the login throttle remembers (the oldest is forgotten)",
    )
    dashboard_reports_dir: str = Field(
        default="var/reports",
        description="folder of backtest reports (<strategy>.html, from `desk backtest --html`) linked from strategy pages",
    )
    dashboard_member_logins: bool = Field(
        default=True, description="let members log in with their desk password (checked by the NATS server)"
    )
    dashboard_trusted_proxies: str = Field(
        default="",
        description=(
            "reverse-proxy IP addresses (comma-separated) whose X-Forwarded-For names the client; "
            "empty = trust no header, count logins by the TCP peer"
        ),
    )

    @field_validator("dashboard_trusted_proxies")
    @classmethod
    def _addresses(cls, value: str) -> str:
        for part in value.split(","):
            if part.strip():
                ipaddress.ip_address(part.strip())  # ValueError: not an IP address
        return value

    @property
    def trusted_proxies(self) -> frozenset[str]:
        return frozenset(
            str(ipaddress.ip_address(p.strip())) for p in self.dashboard_trusted_proxies.split(",") if p.strip()
        )

    def login_throttle(self) -> LoginThrottle:
        return LoginThrottle(
            free_attempts=self.dashboard_login_free_attempts,
            window=self.dashboard_login_window,
            max_delay=self.dashboard_login_max_delay,
            max_clients=self.dashboard_login_max_clients,
        )

    @property
    def service_names(self) -> list[str]:
        return [s.strip() for s in self.dashboard_services.split(",") if s.strip()]

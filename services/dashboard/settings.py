"""Dashboard settings: the shared bus settings plus DASHBOARD_* (docs/dashboard.md)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from desk.bus.settings import BusSettings


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

    @property
    def service_names(self) -> list[str]:
        return [s.strip() for s in self.dashboard_services.split(",") if s.strip()]

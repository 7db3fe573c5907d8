"""Settings of the orchestrator (environment variables ORCH_*, plus the bus's)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from desk.bus.settings import BusSettings
from services.orchestrator.runtimes.process import DEFAULT_COMMAND

#: The repository root (PYTHONPATH of strategy processes, so strategy_sdk and desk_client import).
REPO_ROOT = Path(__file__).resolve().parents[2]


class Settings(BusSettings):
    orch_strategies_dir: Path = Field(
        default=Path("strategies"), description="folder of strategies: <id>/strategy.py + <id>/config.json"
    )
    orch_runtime: Literal["process", "docker"] = Field(
        default="process", description="where strategies run: process (local subprocesses) or docker (containers)"
    )
    orch_autodeploy: bool = Field(default=True, description="deploy every enabled strategy when the service starts")
    orch_log_dir: Path = Field(default=Path("var/logs"), description="folder of the strategies' <id>.log files")
    orch_process_command: str = Field(
        default=DEFAULT_COMMAND,
        description="command of the process runtime; {python}, {path} and {strategy_id} are filled in",
    )
    orch_repo_root: Path = Field(default=REPO_ROOT, description="PYTHONPATH given to strategy processes")
    orch_backoff_initial: float = Field(default=1.0, gt=0, description="seconds before the first restart after a crash")
    orch_backoff_max: float = Field(default=60.0, gt=0, description="longest wait between restarts, seconds")
    orch_stable_after: float = Field(
        default=60.0, gt=0, description="seconds of running after which a crash counts as the first again"
    )
    orch_max_restarts: int = Field(
        default=10, ge=0, description="restarts after consecutive quick crashes before a strategy is FAILED"
    )
    orch_stop_timeout: float = Field(default=10.0, gt=0, description="seconds between SIGTERM and SIGKILL on stop")
    orch_heartbeat_interval: float = Field(
        default=5.0,
        gt=0,
        description="seconds between a strategy's heartbeats (given to it as DESK_HEARTBEAT_INTERVAL unless its "
        "config.json env asks for a shorter one)",
    )
    orch_heartbeat_misses: int = Field(
        default=3, ge=1, description="missed heartbeat intervals after which a running strategy is killed and restarted"
    )
    orch_start_timeout: float = Field(
        default=30.0,
        gt=0,
        description="seconds a strategy has to send its first heartbeat; deploy/start/restart wait this long at most",
    )
    orch_nats_auth_file: Path | None = Field(
        default=None, description="NATS users file to add strategy users to (per-strategy identities); unset = off"
    )
    orch_nats_base_users: Path | None = Field(
        default=None, description="JSON list of the service and admin users the users file always holds"
    )
    orch_nats_members_file: Path | None = Field(
        default=None,
        description="members' NATS users (bcrypt hashes; desk member add); default: members.json "
        "beside ORCH_NATS_AUTH_FILE",
    )
    orch_code_dir: Path = Field(
        default=Path("var/deployed"),
        description="where uploaded strategies (desk deploy ./folder) are unpacked: <id>/<version>/",
    )
    orch_upload_max_bytes: int = Field(
        default=5 * 1024**2,
        ge=64 * 1024,
        le=64 * 1024**2,
        description="largest upload of a strategy folder (an uncompressed tar), bytes",
    )
    orch_code_versions: int = Field(
        default=10, ge=2, le=1000, description="uploaded versions kept per strategy (older ones are deleted)"
    )
    orch_member_max_strategies: int = Field(
        default=10, ge=1, le=1000, description="uploaded strategies a member may have"
    )
    orch_nats_pid_file: Path | None = Field(
        default=None,
        description="nats-server's pid file, to signal a reload (a cluster's: one pid a line, every node reloaded)",
    )
    orch_nats_reload: Literal["pid", "docker"] = Field(
        default="pid", description="how to make NATS reload its users: pid (SIGHUP via the pid file) or docker"
    )
    orch_docker_image: str = Field(
        default="quantdesk/strategy:latest", description="docker: the strategy runtime image"
    )
    orch_docker_host_strategies_dir: Path | None = Field(
        default=None,
        description="docker: the strategies folder's path on the Docker host (for bind mounts); "
        "default: the source of this container's ORCH_STRATEGIES_DIR mount, or ORCH_STRATEGIES_DIR itself",
    )
    orch_docker_nats_url: str = Field(
        default="nats://nats:4222", description="docker: NATS as strategy containers reach it on their network"
    )
    orch_docker_nats_container: str = Field(
        default="",
        description="docker: the NATS containers (comma-separated) to reload and join to strategy networks; "
        "default: those of the compose project labelled quantdesk.nats, else its service nats",
    )
    orch_sites: str = Field(
        default="",
        description="docker: other machines' Docker engines a strategy's config.json site may name, JSON "
        '{"lab": {"docker_host": ..., "docker_tls_dir": ..., "leaf_container": ...}} (docs/cluster.md)',
    )
    orch_docker_memory: str = Field(
        default="256m", pattern=r"^[1-9][0-9]*[kmgKMG]?$", description="docker: default memory limit per strategy"
    )
    orch_docker_cpus: str = Field(
        default="0.5", pattern=r"^[0-9]+(\.[0-9]+)?$", description="docker: default CPU limit per strategy"
    )
    orch_docker_pids: int = Field(default=128, ge=8, le=4096, description="docker: default pids limit per strategy")
    orch_sandbox: Literal["auto", "bwrap", "none"] = Field(
        default="auto",
        description="process: confinement of strategies: auto (bubblewrap when usable, else unconfined with a "
        "warning), bwrap (required: strategies do not start without it), none (unconfined)",
    )
    orch_sandbox_bwrap: str = Field(default="bwrap", description="process: the bubblewrap program")
    orch_process_limits: Literal["auto", "none"] = Field(
        default="auto", description="process: resource limits: auto (cgroups, else rlimits) or none"
    )
    orch_process_memory: str = Field(
        default="256m", pattern=r"^[1-9][0-9]*[kmgKMG]?$", description="process: default memory limit per strategy"
    )
    orch_process_cpus: str = Field(
        default="0.5", pattern=r"^[0-9]+(\.[0-9]+)?$", description="process: default CPU limit per strategy"
    )
    orch_process_pids: int = Field(default=128, ge=8, le=4096, description="process: default pids limit per strategy")
    orch_log_max_bytes: int = Field(
        default=10 * 1024**2, ge=64 * 1024, description="size at which a strategy's <id>.log is rotated, bytes"
    )
    orch_log_backups: int = Field(default=3, ge=0, le=100, description="rotated logs kept: <id>.log.1 ... .log.N")
    orch_log_rate: int = Field(
        default=256 * 1024,
        ge=1024,
        description="bytes/s a strategy may log (bursts of 4x); lines beyond are dropped and counted",
    )

    @field_validator("orch_sites")
    @classmethod
    def _sites_are_valid(cls, value: str) -> str:
        from services.orchestrator.sites import parse_sites

        parse_sites(value)  # SitesError (a ValueError) names the site and key
        return value

    @field_validator("orch_process_command")
    @classmethod
    def _command_names_the_strategy(cls, value: str) -> str:
        if "{path}" not in value and "{strategy_id}" not in value:
            raise ValueError("the command must contain {path} (or {strategy_id}) to know which strategy to run")
        return value

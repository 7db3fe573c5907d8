"""Sites: other machines whose Docker engine runs some of the desk's strategies (issue 14).

A strategy's ``config.json`` may name a ``site``; the orchestrator (docker runtime) then runs it on that
site's Docker engine instead of its own, on a strategy network that only the site's **NATS leaf node**
joins. The leaf node is a nats-server on the site's machine that connects out to the desk's NATS (one
server or every node of a cluster) as the desk's leaf user (``desk-leaf``, desk.bus.auth): a strategy
there talks only to its local leaf node, and the leaf node carries its subjects to and from the desk.

Identities: a strategy on a site is a user of that site's leaf node only (the desk's own servers do not
know it). The orchestrator writes the leaf node's users file through the site's Docker engine (into the
leaf container, at ``leaf_auth_file``) and makes it re-read it (SIGHUP through the engine), then waits
for the leaf node's "Reloaded server configuration" line, as it proves a new user on its own servers.

``ORCH_SITES`` (JSON, an object of site name -> settings)::

    {"lab": {"docker_host": "tcp://10.0.0.7:2376", "docker_tls_dir": "/run/secrets/lab-docker",
             "leaf_container": "quantdesk-site-leaf"}}

Read here and checked strictly: an unknown key, a name that is not a plain word, a ``docker_host`` that
is not unix:// or tcp://, a relative path: each is an error naming the site and the key, and the
orchestrator does not start.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from desk.specs import SITE_RE

CONTAINER_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")
DEFAULT_LEAF_AUTH_FILE = "/etc/nats/auth/auth.conf"
API_VERSION = "1.41"
_KEYS = {"docker_host", "docker_tls_dir", "leaf_container", "leaf_auth_file"}


class SitesError(ValueError):
    """ORCH_SITES is not a valid description of the desk's sites."""


@dataclass(frozen=True)
class Site:
    name: str
    docker_host: str
    leaf_container: str
    docker_tls_dir: str = ""
    leaf_auth_file: str = DEFAULT_LEAF_AUTH_FILE

    def docker_client(self) -> Any:
        """A Docker SDK client of this site's engine (TLS with ca.pem, cert.pem and key.pem from
        ``docker_tls_dir`` when given, as ``docker --tlsverify`` reads them). It connects lazily: an
        engine that is down is an error of the call that needs it, not of the orchestrator's start
        (certificate files that are missing are: TLSParameterError, at once)."""
        import docker

        tls: Any = False
        if self.docker_tls_dir:
            from docker.tls import TLSConfig

            folder = PurePosixPath(self.docker_tls_dir)
            tls = TLSConfig(
                client_cert=(str(folder / "cert.pem"), str(folder / "key.pem")),
                ca_cert=str(folder / "ca.pem"),
                verify=True,
            )
        # 30 s per call (docker-py's default is 60): a site that does not answer must not hold the
        # orchestrator's start or a deploy for long; waiting for a container's end has no timeout.
        # An explicit API version (1.41: Docker 20.10 and later): with none, docker-py asks the engine
        # for its version while the client is made, and a site that is down would stop the desk's start.
        return docker.DockerClient(base_url=self.docker_host, tls=tls, timeout=30, version=API_VERSION)


def parse_sites(text: str) -> dict[str, Site]:
    """The sites ``ORCH_SITES`` describes ({} for an empty value), or SitesError."""
    if not text.strip():
        return {}
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SitesError(f"ORCH_SITES is not valid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(raw, dict):
        raise SitesError(f"ORCH_SITES must be a JSON object of site name -> settings, got {type(raw).__name__}")
    return {name: _site(name, value) for name, value in raw.items()}


def _site(name: Any, value: Any) -> Site:
    if not isinstance(name, str) or not SITE_RE.match(name):
        raise SitesError(f"site name {name!r}: use 1-24 characters of a-z, 0-9 and -, starting with a letter")
    if not isinstance(value, dict):
        raise SitesError(f"site {name}: its settings must be an object, got {type(value).__name__}")
    unknown = sorted(set(value) - _KEYS)
    if unknown:
        raise SitesError(f"site {name}: unknown keys {unknown}; use {sorted(_KEYS)}")
    for key, item in value.items():
        if not isinstance(item, str):
            raise SitesError(f"site {name}: {key} must be a string, got {type(item).__name__}")
    docker_host = value.get("docker_host", "")
    if not docker_host.startswith(("unix:///", "tcp://")):
        raise SitesError(f"site {name}: docker_host must be unix:///path or tcp://host:port, got {docker_host!r}")
    if docker_host.startswith("tcp://") and not value.get("docker_tls_dir"):
        raise SitesError(
            f"site {name}: a tcp:// engine needs docker_tls_dir (ca.pem, cert.pem, key.pem): an engine "
            "reachable without TLS gives root on that machine to anyone who can reach it"
        )
    leaf = value.get("leaf_container", "")
    if not CONTAINER_RE.match(leaf):
        raise SitesError(f"site {name}: leaf_container must be the name of the site's leaf node container")
    for key in ("docker_tls_dir", "leaf_auth_file"):
        path = value.get(key, "")
        if path and (not path.startswith("/") or ".." in PurePosixPath(path).parts):
            raise SitesError(f"site {name}: {key} must be an absolute path, got {path!r}")
    return Site(
        name=name,
        docker_host=docker_host,
        leaf_container=leaf,
        docker_tls_dir=value.get("docker_tls_dir", ""),
        leaf_auth_file=value.get("leaf_auth_file", DEFAULT_LEAF_AUTH_FILE),
    )


__all__ = ["SITE_RE", "Site", "SitesError", "parse_sites"]

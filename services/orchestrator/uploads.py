"""Uploaded strategy folders (``desk deploy ./folder``): hostile input, checked before anything is written.

An upload is the folder as an **uncompressed** tar (no decompression: what is checked is what is
stored), sent in bounded chunks on the member's control subject (:class:`Uploads` holds them, per
member, bounded in count, size and age) and committed with its size and sha256. :func:`read_tar`
accepts only regular files and directories with relative, normalised names (no absolute path, no
``..``, no symlink or hard link, no device, fifo or sparse file), at most :data:`MAX_FILES` files,
the whole archive within the size limit, ``strategy.py`` and ``config.json`` at its top. Nothing is
extracted by :mod:`tarfile`: :func:`materialise` writes the checked files itself, with fresh
descriptors (``O_EXCL | O_NOFOLLOW``), into a new directory it then renames into place.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from desk.bus.errors import DeskError
from services.orchestrator.discovery import CONFIG_FILE, STRATEGY_FILE

#: One chunk's data at most (the desk's messages stay under codec.MAX_MESSAGE_BYTES).
MAX_CHUNK = 48 * 1024
MAX_FILES = 200
MAX_NAME = 200
#: Uploads a member may have in progress at once; an unfinished one is forgotten after UPLOAD_TTL s.
MAX_OPEN_UPLOADS = 4
UPLOAD_TTL = 600.0
UPLOAD_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def refuse(code: str, message: str) -> DeskError:
    return DeskError(code, message, status=400)


@dataclass
class Upload:
    member: str
    strategy_id: str
    data: bytearray = field(default_factory=bytearray)
    touched: float = field(default_factory=time.monotonic)


class Uploads:
    """Uploads in progress, by (member, upload id); each bounded by ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._open: dict[tuple[str, str], Upload] = {}

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, u in self._open.items() if now - u.touched > UPLOAD_TTL]:
            del self._open[key]

    def add(self, member: str, strategy_id: str, upload_id: str, offset: int, data: bytes) -> int:
        """Append one chunk (in order; a repeated chunk is acknowledged again). Returns bytes held."""
        if not UPLOAD_ID_RE.match(upload_id):
            raise refuse("BAD_UPLOAD", "upload_id must be 1-64 of A-Z a-z 0-9 _ -")
        if len(data) > MAX_CHUNK:
            raise refuse("CHUNK_TOO_LARGE", f"a chunk holds at most {MAX_CHUNK} bytes, got {len(data)}")
        self._expire()
        key = (member, upload_id)
        upload = self._open.get(key)
        if upload is None:
            if offset != 0:
                raise refuse("BAD_UPLOAD", f"no upload {upload_id!r} in progress (it starts at offset 0)")
            if sum(1 for m, _ in self._open if m == member) >= MAX_OPEN_UPLOADS:
                raise refuse("TOO_MANY_UPLOADS", f"at most {MAX_OPEN_UPLOADS} uploads in progress per member")
            upload = self._open[key] = Upload(member, strategy_id)
        if upload.strategy_id != strategy_id:
            raise refuse("BAD_UPLOAD", f"upload {upload_id!r} is for {upload.strategy_id!r}, not {strategy_id!r}")
        held = len(upload.data)
        if offset < held and bytes(upload.data[offset : offset + len(data)]) == data:
            return held  # a retried chunk
        if offset != held:
            raise refuse("BAD_UPLOAD", f"chunk at offset {offset}, expected {held}: send chunks in order")
        if held + len(data) > self.max_bytes:
            del self._open[key]
            raise refuse("TOO_LARGE", f"the upload is larger than {self.max_bytes} bytes (ORCH_UPLOAD_MAX_BYTES)")
        upload.data += data
        upload.touched = time.monotonic()
        return len(upload.data)

    def take(self, member: str, strategy_id: str, upload_id: str, size: int, sha256: str) -> bytes:
        """The whole upload, checked against its announced size and sha256, and forgotten."""
        upload = self._open.pop((member, upload_id), None)
        if upload is None or upload.strategy_id != strategy_id:
            raise refuse("BAD_UPLOAD", f"no upload {upload_id!r} of {strategy_id!r} in progress")
        data = bytes(upload.data)
        if len(data) != size:
            raise refuse("BAD_UPLOAD", f"the upload holds {len(data)} bytes, the commit says {size}")
        if not SHA256_RE.match(sha256) or hashlib.sha256(data).hexdigest() != sha256:
            raise refuse("BAD_DIGEST", "the upload's sha256 does not match the commit's")
        return data


def _clean_name(raw: str) -> str:
    """The member's relative path, normalised, or a refusal naming it."""
    shown = raw[:80]
    if not raw or len(raw) > MAX_NAME or "\x00" in raw or "\\" in raw:
        raise refuse("BAD_PATH", f"bad file name {shown!r} in the upload")
    if raw.startswith("/"):
        raise refuse("BAD_PATH", f"absolute path {shown!r} in the upload")
    parts = [p for p in PurePosixPath(raw).parts if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise refuse("BAD_PATH", f"path {shown!r} leaves the folder ('..')")
    if not parts:
        return ""
    return "/".join(parts)


def read_tar(data: bytes, max_bytes: int) -> dict[str, bytes]:
    """The files of an uploaded folder (relative path -> content), or a refusal saying what is wrong."""
    if len(data) > max_bytes:
        raise refuse("TOO_LARGE", f"the upload is larger than {max_bytes} bytes")
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:")  # noqa: SIM115 - closed by `with archive` below; uncompressed only
    except tarfile.TarError as exc:
        raise refuse("BAD_ARCHIVE", f"the upload is not an uncompressed tar: {exc}") from None
    files: dict[str, bytes] = {}
    dirs: set[str] = set()
    with archive:
        try:
            members = archive.getmembers()
        except (tarfile.TarError, EOFError) as exc:
            raise refuse("BAD_ARCHIVE", f"the upload is not a valid tar: {exc}") from None
        for member in members:
            name = _clean_name(member.name)
            if member.issym() or member.islnk():
                raise refuse("BAD_FILE_TYPE", f"{member.name[:80]!r} is a link: only regular files are accepted")
            if member.isdir():
                if name:
                    dirs.add(name)
                continue
            if not member.isreg() or member.type == tarfile.GNUTYPE_SPARSE:
                raise refuse("BAD_FILE_TYPE", f"{member.name[:80]!r} is not a regular file (device, fifo...)")
            if not name:
                raise refuse("BAD_PATH", "a file without a name in the upload")
            if name in files or name in dirs:
                raise refuse("BAD_PATH", f"{name!r} appears twice in the upload")
            if len(files) >= MAX_FILES:
                raise refuse("TOO_MANY_FILES", f"more than {MAX_FILES} files in the upload")
            handle = archive.extractfile(member)
            content = handle.read(member.size + 1) if handle is not None else b""
            if len(content) != member.size:
                raise refuse("BAD_ARCHIVE", f"{name!r} is truncated in the upload")
            files[name] = content
    for name in files:  # a file may not also be a folder of another file
        parent = name.rpartition("/")[0]
        while parent:
            if parent in files:
                raise refuse("BAD_PATH", f"{parent!r} is both a file and a folder in the upload")
            parent = parent.rpartition("/")[0]
    for required in (STRATEGY_FILE, CONFIG_FILE):
        if required not in files:
            raise refuse(
                "MISSING_FILE",
                f"the upload has no {required} at its top (the folder's layout: {STRATEGY_FILE} + {CONFIG_FILE})",
            )
    return files


def materialise(files: dict[str, bytes], target: Path) -> Path:
    """Write checked ``files`` into ``target`` (a new directory; an existing one is kept as it is:
    a version's content never changes). Returns ``target``."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{time.monotonic_ns()}")
    tmp.mkdir(mode=0o755)
    try:
        for name, content in sorted(files.items()):
            path = tmp.joinpath(*name.split("/"))
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            if not path.resolve().is_relative_to(tmp.resolve()):  # belt and braces: names are clean
                raise refuse("BAD_PATH", f"{name!r} leaves the folder")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target

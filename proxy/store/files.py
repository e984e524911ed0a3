"""The memory backend's durable part: one encrypted file per token key in ``state_dir``.

Workers on one machine share tokens through these files. Writes are atomic (a new file,
fsynced, renamed over the old, the directory fsynced), so a crash leaves the old record or
the new one, never half of either. The lease is an exclusive ``flock`` on a lock file: the
kernel drops it when its holder exits, however it exits, so a worker that dies mid-fetch
never blocks the others. Every file is created mode 0600.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from proxy.secrets.envelope import MasterKeys
from proxy.store.records import TokenRecord


class FileLease:
    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    async def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class FileStore:
    backend = "memory"

    def __init__(self, directory: Path, keys: MasterKeys, record_file: Path | None = None) -> None:
        """``record_file``: one connector's own file (``token_store``), its locks beside it."""
        self.directory = directory
        self.keys = keys
        self._record_file = record_file
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    @classmethod
    def single(cls, path: Path, keys: MasterKeys) -> FileStore:
        return cls(path.parent, keys, record_file=path)

    def _path(self, key: str, suffix: str) -> Path:
        if self._record_file is not None:
            name = self._record_file.name
            return self._record_file.with_name(name if suffix == ".json" else name + suffix)
        return self.directory / f"token-{key}{suffix}"

    async def read(self, key: str) -> TokenRecord | None:
        try:
            sealed = self._path(key, ".json").read_bytes()
        except FileNotFoundError:
            return None
        return TokenRecord.unseal(sealed, key, self.keys)

    @contextlib.contextmanager
    def _writing(self, key: str) -> Iterator[None]:
        """Writers of one key take turns (a short flock, apart from the lease): a
        read-modify-write such as :meth:`invalidate` never puts back an older record over a
        rotation written meanwhile."""
        fd = os.open(self._path(key, ".write"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    async def write(self, record: TokenRecord) -> None:
        with self._writing(record.key):
            self._write(record)

    def _write(self, record: TokenRecord) -> None:
        # Small and local: done inline, so nothing can run between the write and its use.
        target = self._path(record.key, ".json")
        temporary = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, record.seal(self.keys).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, target)
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    async def invalidate(self, key: str, fingerprint: str) -> None:
        with self._writing(key):
            record = await self.read(key)
            if record is not None and record.fingerprint == fingerprint:
                self._write(replace(record.without_access_token(), written_wall=time.time()))

    async def try_lease(self, key: str) -> FileLease | None:
        fd = os.open(self._path(key, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return FileLease(fd)

    async def claim_once(self, name: str, ttl: float) -> bool:
        now = time.time()
        for spent in self.directory.glob("once-*"):  # few: one per recent authorization
            with contextlib.suppress(OSError):
                if spent.stat().st_mtime < now - ttl:
                    spent.unlink()
        try:
            os.close(os.open(self.directory / f"once-{name}", os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            return False
        return True

    def health(self) -> str:
        return "ok"

    async def close(self) -> None:
        """Nothing stays open between calls."""

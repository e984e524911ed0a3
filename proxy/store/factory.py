"""The token store a runtime uses, made from ``cache`` and ``state_dir``.

Without ``TOKENPROXY_MASTER_KEY`` (or ``_FILE``), a key is generated once into
``state_dir/master.key`` (mode 0600) with a warning: it keeps stored refresh tokens
unreadable to whoever copies the store (a backup, Redis) without that file, not from
whoever can read ``state_dir`` itself.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from proxy.config.models import Settings
from proxy.errors import ConfigError
from proxy.secrets.envelope import KEY_ENV, KEY_FILE_ENV, EnvelopeError, MasterKeys, generate_key
from proxy.store.base import TokenStore
from proxy.store.files import FileStore

logger = logging.getLogger(__name__)

KEY_FILE_NAME = "master.key"


def store_keys(directory: Path) -> MasterKeys:
    keys = MasterKeys.from_environment()
    if keys.current is not None:
        return keys
    path = directory / KEY_FILE_NAME
    if not path.exists():
        _generate_key_file(path)
    generated = MasterKeys.from_environment({KEY_FILE_ENV: str(path)}).current
    return MasterKeys(generated, keys.old)


def _generate_key_file(path: Path) -> None:
    # Written whole under another name, then linked into place: a worker starting at the
    # same moment sees no key file or a complete one, never an empty one.
    draft = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(generate_key() + "\n")
        file.flush()
        os.fsync(file.fileno())
    try:
        os.link(draft, path)
    except FileExistsError:
        return  # another worker made it just now
    finally:
        draft.unlink()
    logger.warning(
        "no TOKENPROXY_MASTER_KEY: generated %s (mode 0600) to encrypt the token store; "
        "a copy of the store is unreadable without it, but anyone who can read state_dir "
        "can read both. Set TOKENPROXY_MASTER_KEY to keep the key elsewhere",
        path,
    )


def store_problems(settings: Settings) -> list[str]:
    """What keeps the configured store from working, found before anything opens."""
    if settings.cache.backend != "redis":
        return []
    local_files = [
        f"connectors.{name}.auth.token_store: a file is not shared by the replicas (one "
        "replica's rotation would revoke the others' refresh token); leave it out to keep "
        "the tokens in Redis"
        for name, connector in settings.connectors.items()
        if getattr(connector.auth, "token_store", None) is not None
    ]
    if local_files:
        return local_files
    try:
        current = MasterKeys.from_environment().current
    except EnvelopeError as exc:
        return [f"cache.backend: {exc}"]
    if current is None:
        # A key generated per machine would leave each replica unable to read the others'.
        return [
            "cache.backend: redis shares sealed tokens between replicas: set "
            f"{KEY_ENV} (or {KEY_FILE_ENV}) to the same master key on every replica"
        ]
    return []


def open_store(settings: Settings) -> TokenStore | None:
    """The store, or None when no ``state_dir`` is known (settings made in code)."""
    if settings.state_dir is None:
        return None
    directory = Path(settings.state_dir)
    cache = settings.cache
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        keys = store_keys(directory)
        local = FileStore(directory, keys)
    except OSError as exc:
        raise ConfigError([f"state_dir: cannot use {directory} ({exc.strerror})"]) from None
    except EnvelopeError as exc:
        raise ConfigError([f"state_dir: {exc}"]) from None
    if cache.backend == "memory" or cache.url is None:
        return local
    from proxy.store.redis import RedisStore  # the redis package: only when used

    url = cache.url.get_secret_value()
    options: dict[str, object] = {}
    if url.lower().startswith("rediss://"):
        options = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}  # never unverified
    if cache.tls is not None:
        options |= {
            "ssl_ca_certs": cache.tls.ca_file,
            "ssl_certfile": cache.tls.cert_file,
            "ssl_keyfile": cache.tls.key_file,
        }
    return RedisStore.connect(url, cache.key_prefix, keys, local, cache.lease_ttl, **options)

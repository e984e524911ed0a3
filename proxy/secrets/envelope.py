"""Secrets at rest: ``enc:v1:<key id>:<base64url(nonce + AES-256-GCM ciphertext)>``.

One master key encrypts (``TOKENPROXY_MASTER_KEY``, or ``TOKENPROXY_MASTER_KEY_FILE``);
older keys, comma-separated in ``TOKENPROXY_OLD_MASTER_KEYS``, only decrypt, so keys can be
rotated. The key id is derived from the key itself (the first 8 hex digits of its SHA-256),
so an envelope says which key opens it without naming a secret. Everything tokenproxy keeps
at rest (config values, stored refresh tokens, cached tokens) goes through this module.

Errors never contain the ciphertext or the plaintext.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PREFIX = "enc:v1:"
ENVELOPE = re.compile(r"enc:v1:([0-9a-f]{8}):([A-Za-z0-9_-]+)")
_AAD = b"tokenproxy enc:v1"
_NONCE = 12
KEY_ENV = "TOKENPROXY_MASTER_KEY"
KEY_FILE_ENV = "TOKENPROXY_MASTER_KEY_FILE"
OLD_KEYS_ENV = "TOKENPROXY_OLD_MASTER_KEYS"


class EnvelopeError(ValueError):
    """A message fit for a config error: which problem, never which bytes."""


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def generate_key() -> str:
    """A new master key: 32 random bytes, base64url."""
    return _b64encode(os.urandom(32))


def _parse_key(text: str, source: str) -> bytes:
    try:
        key = _b64decode(text.strip())
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise EnvelopeError(f"{source} is not a master key (expected `tokenproxy keygen` output)")
    return key


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


@dataclass(frozen=True)
class MasterKeys:
    current: bytes | None
    old: tuple[bytes, ...] = ()

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> MasterKeys:
        env = os.environ if environ is None else environ
        current = None
        if env.get(KEY_ENV):
            current = _parse_key(env[KEY_ENV], KEY_ENV)
        elif env.get(KEY_FILE_ENV):
            try:
                text = Path(env[KEY_FILE_ENV]).read_text()
            except OSError as exc:
                raise EnvelopeError(f"cannot read {KEY_FILE_ENV} ({exc.strerror})") from None
            current = _parse_key(text, KEY_FILE_ENV)
        old = tuple(
            _parse_key(part, OLD_KEYS_ENV)
            for part in env.get(OLD_KEYS_ENV, "").split(",")
            if part.strip()
        )
        return cls(current, old)

    def _by_id(self) -> dict[str, bytes]:
        keys = [*self.old, *([self.current] if self.current else [])]
        return {key_id(key): key for key in keys}

    def encrypt(self, plaintext: str) -> str:
        if self.current is None:
            raise EnvelopeError(f"no master key: set {KEY_ENV} or {KEY_FILE_ENV}")
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # only when used

        nonce = os.urandom(_NONCE)
        sealed = AESGCM(self.current).encrypt(nonce, plaintext.encode(), _AAD)
        return f"{PREFIX}{key_id(self.current)}:{_b64encode(nonce + sealed)}"

    def decrypt(self, envelope: str) -> str:
        match = ENVELOPE.fullmatch(envelope.strip())
        if match is None:
            raise EnvelopeError("is not a well-formed enc:v1 value")
        keys = self._by_id()
        if not keys:
            raise EnvelopeError(f"is encrypted, but no master key is set ({KEY_ENV})")
        key = keys.get(match.group(1))
        if key is None:
            raise EnvelopeError(
                f"is encrypted under key id {match.group(1)}, which is neither the master key "
                f"nor one of {OLD_KEYS_ENV}"
            )
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        data = _b64decode(match.group(2))
        try:
            return AESGCM(key).decrypt(data[:_NONCE], data[_NONCE:], _AAD).decode()
        except (InvalidTag, ValueError, UnicodeDecodeError):
            raise EnvelopeError("cannot be decrypted (wrong key or corrupted value)") from None

    def rekey(self, text: str) -> tuple[str, int]:
        """``text`` with every envelope re-encrypted under the current key, and how many."""
        count = 0

        def replace(match: re.Match[str]) -> str:
            nonlocal count
            assert self.current is not None
            if match.group(1) == key_id(self.current):
                return match.group(0)
            try:
                plaintext = self.decrypt(match.group(0))
            except EnvelopeError as exc:
                line = text.count("\n", 0, match.start()) + 1
                raise EnvelopeError(f"line {line}: the value {exc}") from None
            count += 1
            return self.encrypt(plaintext)

        if self.current is None:
            raise EnvelopeError(f"no master key: set {KEY_ENV} or {KEY_FILE_ENV}")
        return ENVELOPE.sub(replace, text), count

"""Encrypted values: the envelope, key rotation, config integration and the CLI commands."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from proxy.config.loader import load_settings
from proxy.errors import ConfigError
from proxy.secrets.envelope import EnvelopeError, MasterKeys, generate_key, key_id

CANARY = "sec_CANARY_enc_77aa"
KEY, OTHER = generate_key(), generate_key()
WriteConfig = Callable[[dict[str, Any]], Path]


def keys(current: str | None = KEY, *old: str) -> MasterKeys:
    env = {"TOKENPROXY_MASTER_KEY": current or "", "TOKENPROXY_OLD_MASTER_KEYS": ",".join(old)}
    return MasterKeys.from_environment(env)


def test_round_trip_with_the_key_id_in_the_envelope() -> None:
    sealed = keys().encrypt(CANARY)
    assert re.fullmatch(r"enc:v1:[0-9a-f]{8}:[A-Za-z0-9_-]+", sealed)
    assert sealed.split(":")[2] == key_id(keys().current or b"")
    assert CANARY not in sealed
    assert keys().decrypt(sealed) == CANARY
    assert keys().encrypt(CANARY) != sealed  # a fresh nonce every time


def test_rotation_decrypts_with_old_keys_only() -> None:
    old_value = keys(OTHER).encrypt(CANARY)
    assert keys(KEY, OTHER).decrypt(old_value) == CANARY
    with pytest.raises(EnvelopeError, match="neither the master key nor one of"):
        keys(KEY).decrypt(old_value)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda v: v[:-3] + ("AAA" if not v.endswith("AAA") else "BBB"), "cannot be decrypted"),
        (lambda v: v.replace("enc:v1:", "enc:v2:"), "is not a well-formed enc:v1 value"),
        (lambda v: v[:20], "cannot be decrypted"),
        (lambda v: "enc:v1:nothex00:abc", "is not a well-formed enc:v1 value"),
    ],
    ids=["tampered", "unknown-version", "truncated", "bad-key-id"],
)
def test_damaged_envelopes(mutate: Callable[[str], str], message: str) -> None:
    with pytest.raises(EnvelopeError, match=message) as info:
        keys().decrypt(mutate(keys().encrypt(CANARY)))
    assert CANARY not in str(info.value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TOKENPROXY_MASTER_KEY": "short"}, "TOKENPROXY_MASTER_KEY is not a master key"),
        ({"TOKENPROXY_MASTER_KEY_FILE": "/nonexistent"}, "cannot read TOKENPROXY_MASTER_KEY_FILE"),
        ({"TOKENPROXY_OLD_MASTER_KEYS": f"{KEY},nope"}, "TOKENPROXY_OLD_MASTER_KEYS is not a"),
    ],
)
def test_bad_keys(env: dict[str, str], message: str) -> None:
    with pytest.raises(EnvelopeError, match=message):
        MasterKeys.from_environment(env)


def test_key_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "key").write_text(KEY + "\n")
    from_file = MasterKeys.from_environment({"TOKENPROXY_MASTER_KEY_FILE": str(tmp_path / "key")})
    assert from_file.decrypt(keys().encrypt(CANARY)) == CANARY


def config_with(secret: str) -> dict[str, Any]:
    return {
        "connectors": {
            "crm": {
                "route": "/crm",
                "upstream": "https://api.example.com",
                "auth": {"type": "static", "token": secret},
            }
        }
    }


def test_encrypted_values_decrypt_at_load(
    write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKENPROXY_MASTER_KEY", KEY)
    settings = load_settings(write_config(config_with(keys().encrypt(CANARY)))).settings
    assert settings.connectors["crm"].auth.token.get_secret_value() == CANARY  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("env", "value", "problem"),
    [
        ({}, keys().encrypt(CANARY), "is encrypted, but no master key is set"),
        ({"TOKENPROXY_MASTER_KEY": OTHER}, keys().encrypt(CANARY), "is encrypted under key id"),
        (
            {"TOKENPROXY_MASTER_KEY": KEY},
            keys().encrypt(CANARY)[:-4] + "AAAA",
            "cannot be decrypted",
        ),
        ({"TOKENPROXY_MASTER_KEY": KEY}, "enc:v1:zz", "is not a well-formed enc:v1 value"),
    ],
    ids=["missing-key", "unknown-key-id", "corrupted", "malformed"],
)
def test_load_errors_name_the_field_and_never_the_value(
    write_config: WriteConfig,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    value: str,
    problem: str,
) -> None:
    monkeypatch.delenv("TOKENPROXY_MASTER_KEY", raising=False)
    for name, item in env.items():
        monkeypatch.setenv(name, item)
    with pytest.raises(ConfigError) as info:
        load_settings(write_config(config_with(value)))
    (line,) = info.value.problems
    assert line.startswith(f"connectors.crm.auth.token: {problem}")
    assert CANARY not in line and value.split(":")[-1] not in line


def run(args: list[str], env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **env},
    )


def test_keygen_encrypt_and_a_config_that_uses_it(write_config: WriteConfig) -> None:
    key = run(["keygen"], {}).stdout.strip()
    assert len(key) == 43 and MasterKeys.from_environment({"TOKENPROXY_MASTER_KEY": key})
    env = {"TOKENPROXY_MASTER_KEY": key}
    sealed = run(["encrypt"], env, stdin=f"{CANARY}\n").stdout.strip()
    assert sealed.startswith("enc:v1:") and CANARY not in sealed
    path = write_config(config_with(sealed))
    checked = run(["check", "-c", str(path)], env)
    assert checked.returncode == 0 and CANARY not in checked.stdout + checked.stderr
    failed = run(["encrypt"], {"TOKENPROXY_MASTER_KEY": ""}, stdin="x")
    assert failed.returncode == 1
    assert "no master key: set TOKENPROXY_MASTER_KEY" in failed.stderr


def test_encrypt_does_not_echo_on_a_terminal() -> None:
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", "encrypt"],
        stdin=terminal,
        stdout=subprocess.PIPE,
        stderr=terminal,
        env={**os.environ, "TOKENPROXY_MASTER_KEY": KEY},
    )
    os.close(terminal)
    screen = b""
    deadline = time.monotonic() + 20
    while b"not echoed" not in screen and time.monotonic() < deadline:  # wait for the prompt
        if select.select([controller], [], [], 0.5)[0]:
            screen += os.read(controller, 1024)
    os.write(controller, f"{CANARY}\n".encode())
    out, _ = process.communicate(timeout=30)
    try:
        while chunk := os.read(controller, 1024):
            screen += chunk
    except OSError:
        pass  # the terminal closed with the process
    os.close(controller)
    assert keys().decrypt(out.decode().strip()) == CANARY
    assert CANARY.encode() not in screen


def test_rekey_rewrites_only_the_envelopes(tmp_path: Path) -> None:
    old = keys(OTHER)
    text = (
        "# tokens for the crm connector\n"
        "connectors:\n"
        "  crm:   # odd spacing is kept\n"
        "    route: /crm\n"
        "    upstream: https://api.example.com\n"
        f"    auth: {{type: static, token: '{old.encrypt(CANARY)}'}}\n"
        f"    # a commented value is rotated too: {old.encrypt('second')}\n"
    )
    path = tmp_path / "config.yaml"
    path.write_text(text)
    path.chmod(0o640)
    env = {"TOKENPROXY_MASTER_KEY": KEY, "TOKENPROXY_OLD_MASTER_KEYS": OTHER}
    result = run(["rekey", "-c", str(path)], env)
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.strip()
        == f"{path}: 2 value(s) re-encrypted under key {key_id(keys().current or b'')}"
    )
    rewritten = path.read_text()
    pattern = r"enc:v1:[0-9a-f]{8}:[A-Za-z0-9_-]+"
    assert re.sub(pattern, "X", rewritten) == re.sub(pattern, "X", text)
    assert [keys().decrypt(v) for v in re.findall(pattern, rewritten)] == [CANARY, "second"]
    assert path.stat().st_mode & 0o777 == 0o640
    # Under the new key alone the config loads; a second rekey has nothing to do.
    checked = run(["check", "-c", str(path)], {"TOKENPROXY_MASTER_KEY": KEY})
    assert checked.returncode == 0, checked.stderr
    again = run(["rekey", "-c", str(path)], {"TOKENPROXY_MASTER_KEY": KEY})
    assert again.stdout.startswith(f"{path}: 0 value(s)") and path.read_text() == rewritten


def test_rekey_refuses_values_it_cannot_open(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    text = f"a: 1\nb: {keys(OTHER).encrypt(CANARY)}\n"
    path.write_text(text)
    result = run(["rekey", "-c", str(path)], {"TOKENPROXY_MASTER_KEY": KEY})
    assert result.returncode == 1
    assert "line 2: the value is encrypted under key id" in result.stderr
    assert path.read_text() == text and CANARY not in result.stderr

"""Every file shipped in config/ loads and builds (TLS files, keys) as it stands."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config.handoff import load_apart
from proxy.config.loader import load_settings
from proxy.runtime import prepare
from proxy.secrets.envelope import KEY_ENV, generate_key
from tests.fakes import example_material
from tests.test_tls import mtls_material

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
EXAMPLES = sorted(CONFIG_DIR.rglob("*.yaml"))


def test_there_are_examples() -> None:
    assert {p.name for p in EXAMPLES} >= {"tokenproxy.yaml", "minimal.yaml"}


@pytest.fixture(autouse=True)
def _example_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real files for the ${VAR}s of the mTLS example (ERP_*) and the JWT bearer and token
    exchange examples (keys, a service-account file, a subject token), made now."""
    material, _ = example_material(tmp_path, "https://oauth2.googleapis.com/token")
    for name, value in (mtls_material(tmp_path) | material).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(KEY_ENV, generate_key())  # the redis example needs the fleet's key


@pytest.mark.parametrize("path", EXAMPLES, ids=[str(p.relative_to(CONFIG_DIR)) for p in EXAMPLES])
def test_example_loads(path: Path) -> None:
    loaded = load_settings(path)
    assert loaded.settings.connectors
    assert prepare(loaded.settings).connectors.keys() == loaded.settings.connectors.keys()
    # The only warning an example may earn is the deliberate one about the password grant.
    assert all("the password grant is deprecated" in w for w in loaded.warnings)
    # What a serving process is handed by the validator process is the same config.
    assert load_apart(path) == loaded

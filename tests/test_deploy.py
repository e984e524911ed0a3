"""The deployment files (deploy/README.md): the Dockerfile's conventions, its pip steps replayed
in a fresh virtual environment (no Docker engine runs here), the Kubernetes manifests against
the API's schemas (offline, strict), and the tokenproxy config inside each ConfigMap."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

import proxy
from proxy.config.base import is_loopback_host
from proxy.config.loader import load_settings
from proxy.runtime import prepare
from proxy.secrets.envelope import KEY_ENV, generate_key
from tests.conftest import StartProxy

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
MANIFEST_DIR = ROOT / "deploy" / "kubernetes"
MANIFESTS = sorted(MANIFEST_DIR.glob("*.yaml"))

STATE_DIR = "/var/lib/tokenproxy"
CONFIG_FILE = "/etc/tokenproxy/config.yaml"
PORT = 8080
UID = 10001
# The oldest Kubernetes the manifests are for (native sidecars: restartable init containers,
# on by default since 1.29) and the newest the installed kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())


# --- the Dockerfile -------------------------------------------------------------------------

_HEREDOC = re.compile(r"<<-?([\"']?)(\w+)\1")


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    value: str  # continuation lines joined; heredoc bodies kept, with their newlines

    def exec_form(self) -> list[str]:
        assert self.value.startswith("["), f"{self.keyword} is not in exec (JSON) form"
        words = json.loads(self.value)
        assert isinstance(words, list) and all(isinstance(w, str) for w in words)
        return words

    def run_flags(self) -> tuple[dict[str, str], str]:
        """``RUN --mount=type=bind,from=build ... cmd``: the flags (name -> value), the command."""
        flags: dict[str, str] = {}
        rest = self.value
        while match := re.match(r"--([\w-]+)=(\S+)\s+", rest):
            flags[match.group(1)] = match.group(2)
            rest = rest[match.end() :]
        return flags, rest


def parse_dockerfile(text: str) -> list[Instruction]:
    instructions: list[Instruction] = []
    lines = iter(text.splitlines())
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue  # comments, parser directives
        logical = line.strip()
        while logical.endswith("\\"):
            following = next(lines)
            if following.lstrip().startswith("#"):
                continue  # a comment inside a continued instruction is dropped
            logical = logical[:-1] + following
        keyword, _, value = logical.partition(" ")
        for _, delimiter in _HEREDOC.findall(value):
            body = []
            for body_line in lines:
                if body_line.strip() == delimiter:
                    break
                body.append(body_line)
            value = "\n".join([value, *body, delimiter])
        instructions.append(Instruction(keyword.upper(), value.strip()))
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """The build stages, each starting with its FROM."""
    result: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            result.append([])
        assert result, "a Dockerfile starts with FROM"
        result[-1].append(instruction)
    return result


def env_of(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            words = shlex.split(instruction.value)
            if "=" in words[0]:
                env.update(word.partition("=")[::2] for word in words)
            else:  # legacy ENV key value
                env[words[0]] = " ".join(words[1:])
    return env


def only(stage: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in stage if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def image() -> list[list[Instruction]]:
    return stages(parse_dockerfile(DOCKERFILE.read_text()))


def test_two_stages_on_python_312_slim(image: list[list[Instruction]]) -> None:
    assert len(image) == 2
    build, final = (stage[0].value.split() for stage in image)
    assert build[0] == final[0] == "python:3.12-slim"
    assert build[1:] == ["AS", "build"]


def test_the_final_stage_installs_only_the_wheels(image: list[list[Instruction]]) -> None:
    final = image[-1]
    text = "\n".join(i.value for i in final if i.keyword == "RUN")
    for tool in ("apt-get", "apk ", "gcc", "build-essential", "pip wheel", "git "):
        assert tool not in text
    # The wheels are bind-mounted for the install step, never copied into a layer.
    assert not [i for i in final if i.keyword in ("COPY", "ADD")]
    installs = [i for i in final if i.keyword == "RUN" and "pip install" in i.value]
    assert len(installs) == 1
    flags, command = installs[0].run_flags()
    mount = dict(part.split("=", 1) for part in flags["mount"].split(","))
    assert mount["type"] == "bind" and mount["from"] == "build"
    assert shlex.split(command) == [
        "pip",
        "install",
        "--no-index",
        "--find-links",
        mount["target"],
        "tokenproxy[speed]",
    ]
    env = env_of(final)
    assert env["PIP_NO_CACHE_DIR"] == "1"
    assert env["PYTHONDONTWRITEBYTECODE"] == env["PYTHONUNBUFFERED"] == "1"


def test_the_build_stage_builds_wheels_with_the_speed_extra(
    image: list[list[Instruction]],
) -> None:
    runs = [i.value for i in image[0] if i.keyword == "RUN"]
    assert any('["optional-dependencies"]["speed"]' in run for run in runs)
    assert sum(run.count("pip wheel ") for run in runs) == 2  # dependencies, then the project
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert [r for r in project["optional-dependencies"]["speed"] if r.startswith("uvloop")]


def test_runs_as_a_numeric_non_root_user(image: list[list[Instruction]]) -> None:
    user = only(image[-1], "USER").value
    assert all(part.isdigit() for part in user.split(":")), "numeric, for runAsNonRoot"
    assert int(user.split(":")[0]) == UID


def test_config_state_port_and_health(image: list[list[Instruction]]) -> None:
    final = image[-1]
    env = env_of(final)
    assert env["TOKENPROXY_CONFIG"] == CONFIG_FILE
    assert env["TOKENPROXY_STATE_DIR"] == STATE_DIR
    volume = only(final, "VOLUME").value
    assert (json.loads(volume) if volume.startswith("[") else volume.split()) == [STATE_DIR]
    assert only(final, "EXPOSE").value in (str(PORT), f"{PORT}/tcp")
    options, _, command = only(final, "HEALTHCHECK").value.partition("CMD ")
    assert "--interval=" in options
    probe = Instruction("CMD", command.strip()).exec_form()
    assert probe[0] == "python"
    assert f"http://127.0.0.1:{PORT}/_proxy/health" in probe[-1]


def test_exec_form_entrypoint_listening_on_all_addresses(image: list[list[Instruction]]) -> None:
    final = image[-1]
    assert only(final, "ENTRYPOINT").exec_form() == ["tokenproxy"]
    command = only(final, "CMD").exec_form()
    assert command[0] == "run"
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--port") + 1] == str(PORT)


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, closely enough: the last matching pattern wins, ``!`` re-includes, and a
    directory's pattern covers what is inside it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated, pattern = pattern.startswith("!"), pattern.lstrip("!")
        candidates = [pattern, pattern[3:]] if pattern.startswith("**/") else [pattern]
        if any(fnmatch.fnmatchcase(p, c) for p in prefixes for c in candidates):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_the_context_small_and_complete(
    image: list[list[Instruction]],
) -> None:
    lines = DOCKERIGNORE.read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for unwanted in (
        ".venv",
        ".git",
        "node_modules",
        "tests/oidc/node_modules",
        ".tokenproxy",
        "proxy/__pycache__/cli.cpython-312.pyc",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
    ):
        assert _dockerignored(unwanted, patterns), unwanted
    sources = [
        word
        for stage in image
        for i in stage
        if i.keyword == "COPY" and not i.value.startswith("--")
        for word in i.value.split()[:-1]
    ]
    assert sources  # pyproject.toml, README.md, proxy
    packaged = [*sources, *(str(p.relative_to(ROOT)) for p in (ROOT / "proxy").rglob("*.py"))]
    assert [path for path in packaged if _dockerignored(path, patterns)] == []


# --- the install steps, replayed in a fresh virtual environment ------------------------------

_NO_NETWORK = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Temporary failure in name "
    r"resolution|Name or service not known|Network is unreachable|ConnectTimeout|ReadTimeout|"
    r"No matching distribution found|Could not find a version that satisfies"
)


class Replay:
    """Runs a stage's steps on this machine: each container path the Dockerfile names
    (WORKDIR, wheel dirs, bind-mount targets) becomes a directory under ``root``."""

    def __init__(self, root: Path, venv: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIP_NO_CACHE_DIR")
        }
        self.env["PATH"] = f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"
        self.env["VIRTUAL_ENV"] = str(venv)
        self.paths: dict[str, Path] = {}
        self.workdir = root

    def host(self, container_path: str) -> Path:
        return self.paths.get(container_path) or self.root / container_path.lstrip("/")

    def rewrite(self, command: str) -> str:
        for container_path in re.findall(r"(?:--wheel-dir|--find-links)[ =](/\S+)", command):
            self.paths.setdefault(container_path, self.host(container_path))
        for container_path, host in sorted(self.paths.items(), key=lambda kv: -len(kv[0])):
            command = re.sub(
                rf"(?<![\w./]){re.escape(container_path)}(?![\w.-])", str(host), command
            )
        return command

    def run(self, command: str, timeout: float = 300) -> None:
        # /bin/sh -c, as Docker runs RUN in shell form.
        result = subprocess.run(
            ["sh", "-c", self.rewrite(command)],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        output = result.stdout + result.stderr
        offline = _NO_NETWORK.search(output) if result.returncode else None
        if offline is not None and os.environ.get("CI") != "true":
            pytest.skip(f"pip cannot reach its package index ({offline[0]})")
        assert result.returncode == 0, f"{command}\n{output[-3000:]}"

    def build_stage(self, stage: list[Instruction]) -> None:
        for instruction in stage[1:]:
            if instruction.keyword == "WORKDIR":
                self.workdir = self.host(instruction.value)
                self.paths[instruction.value] = self.workdir
                self.workdir.mkdir(parents=True, exist_ok=True)
            elif instruction.keyword == "COPY":
                assert not instruction.value.startswith("--"), "COPY flags: extend the replay"
                self.copy(*instruction.value.split())
            elif instruction.keyword == "RUN":
                self.run(instruction.value)
            elif instruction.keyword == "ENV":
                self.set_env(instruction)
            else:
                assert instruction.keyword == "ARG", f"{instruction}: extend the replay"

    def set_env(self, instruction: Instruction) -> None:
        # pip's cache is left on here, to keep the test quick; the image turns it off.
        env = env_of([instruction])
        self.env.update({k: v for k, v in env.items() if k != "PIP_NO_CACHE_DIR"})

    def copy(self, *words: str) -> None:
        *sources, destination = words
        target = self.workdir / destination
        for source in sources:
            origin = ROOT / source
            if origin.is_dir():
                ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
                shutil.copytree(origin, target, dirs_exist_ok=True, ignore=ignore)
            else:
                if destination.endswith("/"):
                    target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target / origin.name if target.is_dir() else target)


@pytest.mark.timeout(900)
def test_the_image_install_steps_work_in_a_fresh_virtual_environment(
    image: list[list[Instruction]], tmp_path: Path
) -> None:
    """Stage 1's steps as written (WORKDIR, COPY, RUN), then stage 2's install step with the
    wheels where its bind mount puts them, on this machine's Python."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    build = Replay(tmp_path / "build", venv)
    build.build_stage(image[0])
    wheels = [p.name for p in build.paths["/wheels"].iterdir()]
    assert any(name.startswith("tokenproxy-") for name in wheels), wheels
    assert any(name.startswith("uvloop-") for name in wheels), wheels

    final = Replay(tmp_path / "final", venv)
    for instruction in image[1]:
        flags, command = instruction.run_flags()
        if instruction.keyword == "ENV":
            final.set_env(instruction)
        elif instruction.keyword == "RUN" and "mount" in flags:
            mount = dict(part.split("=", 1) for part in flags["mount"].split(","))
            final.paths[mount["target"]] = build.host(mount["source"])
            final.run(command)

    clean = {k: v for k, v in build.env.items() if not k.startswith("TOKENPROXY_")}
    version = subprocess.run(
        [str(venv / "bin" / "tokenproxy"), "--version"],
        cwd=tmp_path,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert version.stdout.strip() == f"tokenproxy {proxy.__version__}", version.stderr
    imported = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import uvloop, proxy; print(proxy.__file__)"],
        cwd=tmp_path,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert imported.returncode == 0, imported.stderr
    assert Path(imported.stdout.strip()).is_relative_to(venv), "the installed wheel, not the tree"
    # The installed package validates and builds the shipped configs, as `check` does in a pod.
    for name, config in config_maps():
        path = tmp_path / f"{name}.yaml"
        path.write_text(config)
        env = {**clean, **dummy_environment(config, tmp_path)}
        check = subprocess.run(
            [str(venv / "bin" / "tokenproxy"), "check", "-c", str(path)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert check.returncode == 0, check.stdout + check.stderr


# --- the Kubernetes manifests ------------------------------------------------------------------


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


ALL_DOCUMENTS = [(path, doc) for path in MANIFESTS for doc in documents(path)]


def _doc_id(path: Path, doc: dict[str, Any]) -> str:
    return f"{path.name}:{doc['kind']}/{doc['metadata']['name']}"


def by_kind(path: Path, kind: str) -> list[dict[str, Any]]:
    return [doc for doc in documents(path) if doc["kind"] == kind]


def config_maps() -> Iterator[tuple[str, str]]:
    """``(file-configmap, tokenproxy config text)`` for every ConfigMap of deploy/kubernetes."""
    for path in MANIFESTS:
        for config_map in by_kind(path, "ConfigMap"):
            yield f"{path.stem}-{config_map['metadata']['name']}", config_map["data"]["config.yaml"]


def dummy_environment(config: str, tmp_path: Path) -> dict[str, str]:
    """A value for every ``${VAR}`` the config references, the master key and a state_dir."""
    env = {KEY_ENV: generate_key(), "TOKENPROXY_STATE_DIR": str(tmp_path / "state")}
    for name in re.findall(r"\$\{(\w+)(?::-[^}]*)?\}", config):
        env[name] = "redis://:dummy@127.0.0.1:6379/0" if "REDIS" in name else f"dummy-{name}"
    return env


def tokenproxy_container(pod: dict[str, Any]) -> dict[str, Any]:
    containers = [*pod.get("initContainers", []), *pod["containers"]]
    (found,) = [c for c in containers if c["name"] == "tokenproxy"]
    assert isinstance(found, dict)
    return found


def test_there_are_manifests() -> None:
    assert {p.name for p in MANIFESTS} >= {"sidecar.yaml", "egress-tier.yaml"}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(
    ("path", "doc"), ALL_DOCUMENTS, ids=[_doc_id(p, d) for p, d in ALL_DOCUMENTS]
)
def test_manifest_validates_against_the_kubernetes_schema(
    path: Path, doc: dict[str, Any], version: str
) -> None:
    # Strict: a misspelt or misplaced field is an error, not silently ignored by the API.
    kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_catches_a_misspelt_field() -> None:
    (deployment,) = by_kind(MANIFEST_DIR / "sidecar.yaml", "Deployment")
    tokenproxy_container(deployment["spec"]["template"]["spec"])["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


CONFIG_MAPS = list(config_maps())


@pytest.mark.parametrize(("name", "config"), CONFIG_MAPS, ids=[name for name, _ in CONFIG_MAPS])
def test_configmap_config_loads_and_builds(
    name: str, config: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(config)
    for key, value in dummy_environment(config, tmp_path).items():
        monkeypatch.setenv(key, value)
    loaded = load_settings(path)
    assert prepare(loaded.settings).connectors.keys() == loaded.settings.connectors.keys()
    assert loaded.warnings == []


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_the_pod_matches_its_config(path: Path) -> None:
    """Every ${VAR} of the config comes from a Secret; the container listens where the
    config does; config and state_dir are mounted where the image expects them."""
    (config_map,) = by_kind(path, "ConfigMap")
    config_text = config_map["data"]["config.yaml"]
    config = yaml.safe_load(config_text)
    (deployment,) = by_kind(path, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = tokenproxy_container(pod)

    env = {e["name"]: e for e in container.get("env", [])}
    for name in {*re.findall(r"\$\{(\w+)\}", config_text), KEY_ENV}:
        assert "secretKeyRef" in env[name].get("valueFrom", {}), f"{name} from a Secret"
    args = container["args"]
    assert args[0] == "run"
    assert args[args.index("--host") + 1] == config["listen"]["host"]
    assert int(args[args.index("--port") + 1]) == config["listen"]["port"] == PORT

    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    assert (
        mounts[str(Path(CONFIG_FILE).parent)]["configMap"]["name"] == config_map["metadata"]["name"]
    )
    assert "emptyDir" in mounts[STATE_DIR]
    assert "emptyDir" in mounts["/tmp"]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_the_container_is_locked_down_and_sized(path: Path) -> None:
    (deployment,) = by_kind(path, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = tokenproxy_container(pod)
    security = {**pod.get("securityContext", {}), **container["securityContext"]}
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == UID
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    resources = container["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert set(resources["limits"]) == {"memory"}  # no CPU limit: no throttling mid-burst


def test_sidecar_probes_run_inside_the_container() -> None:
    """A loopback listener cannot be reached by httpGet or tcpSocket probes (they connect to
    the pod IP): every probe of the sidecar is an exec probe against 127.0.0.1."""
    (deployment,) = by_kind(MANIFEST_DIR / "sidecar.yaml", "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = tokenproxy_container(pod)
    assert container in pod["initContainers"] and container["restartPolicy"] == "Always"
    (config_map,) = by_kind(MANIFEST_DIR / "sidecar.yaml", "ConfigMap")
    assert is_loopback_host(yaml.safe_load(config_map["data"]["config.yaml"])["listen"]["host"])
    paths: dict[str, list[str]] = {}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container[kind]
        assert set(probe) & {"exec", "httpGet", "tcpSocket", "grpc"} == {"exec"}
        paths[kind] = re.findall(r"http://127\.0\.0\.1:8080(/\S+?)'", probe["exec"]["command"][-1])
    assert paths == {
        "startupProbe": ["/_proxy/health"],
        "readinessProbe": ["/_proxy/ready"],
        "livenessProbe": ["/_proxy/health"],
    }


def _probe_commands() -> list[list[str]]:
    (deployment,) = by_kind(MANIFEST_DIR / "sidecar.yaml", "Deployment")
    container = tokenproxy_container(deployment["spec"]["template"]["spec"])
    commands = [container[k]["exec"]["command"] for k in ("readinessProbe", "livenessProbe")]
    healthcheck = only(stages(parse_dockerfile(DOCKERFILE.read_text()))[-1], "HEALTHCHECK")
    commands.append(json.loads(healthcheck.value.partition("CMD ")[2]))
    return commands


async def test_the_probe_commands_work_against_a_running_proxy(
    start_proxy: StartProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exec probes and the image's HEALTHCHECK, run as written (but with ``python`` this
    interpreter and the proxy's port): exit 0 while it serves, non-zero once it is gone."""
    (config_map,) = by_kind(MANIFEST_DIR / "sidecar.yaml", "ConfigMap")
    config_text = config_map["data"]["config.yaml"]
    for key, value in dummy_environment(config_text, tmp_path).items():
        monkeypatch.setenv(key, value)
    config = yaml.safe_load(config_text)
    running = await start_proxy({**config, "listen": {**config["listen"], "port": 0}})

    async def probe(command: list[str], port: int) -> int:
        assert command[0] == "python"
        argv = [
            sys.executable,
            *(w.replace(f"127.0.0.1:{PORT}", f"127.0.0.1:{port}") for w in command[1:]),
        ]
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        return await asyncio.wait_for(process.wait(), 30)

    commands = _probe_commands()
    assert [await probe(c, running.port) for c in commands] == [0] * len(commands)
    await running.server.stop()
    assert all([await probe(c, running.port) != 0 for c in commands])


def test_egress_tier_serves_the_cluster_through_a_service() -> None:
    path = MANIFEST_DIR / "egress-tier.yaml"
    (deployment,) = by_kind(path, "Deployment")
    (service,) = by_kind(path, "Service")
    (budget,) = by_kind(path, "PodDisruptionBudget")
    (policy,) = by_kind(path, "NetworkPolicy")
    config = yaml.safe_load(by_kind(path, "ConfigMap")[0]["data"]["config.yaml"])
    namespace = deployment["metadata"]["namespace"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]

    assert deployment["spec"]["replicas"] >= 2
    assert config["listen"]["host"] == "0.0.0.0" and config["clients"]["allow_cidrs"]
    assert f"{service['metadata']['name']}.{namespace}.svc" in config["listen"]["allowed_hosts"]
    assert config["cache"]["backend"] == "redis" and config["cache"]["url"] == "${REDIS_URL}"

    container = tokenproxy_container(deployment["spec"]["template"]["spec"])
    (port,) = container["ports"]
    assert port["containerPort"] == PORT
    assert container["readinessProbe"]["httpGet"] == {"path": "/_proxy/ready", "port": port["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/_proxy/health", "port": port["name"]}

    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= labels.items()
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        (PORT, port["name"])
    ]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["minAvailable"] < deployment["spec"]["replicas"]

    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"].items() <= labels.items()
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = spec["ingress"]
    assert ingress["from"] == [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"tokenproxy-client": "true"}}}
    ]
    assert ingress["ports"] == [{"protocol": "TCP", "port": PORT}]
    egress_ports = {p["port"] for rule in spec["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 6379, 443}  # DNS, Redis, HTTPS: nothing else leaves the tier

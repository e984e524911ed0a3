# syntax=docker/dockerfile:1
# tokenproxy: a small two-stage image. Stage 1 builds wheels of tokenproxy and every dependency
# (with the `speed` extra: uvloop); stage 2 installs only those wheels, from no index, into a
# fresh python:3.12-slim, and runs as uid 10001 with an exec-form entrypoint.
#
#   docker build -t tokenproxy .
#   docker run --read-only --tmpfs /tmp -v "$PWD/config.yaml:/etc/tokenproxy/config.yaml:ro" \
#     -v tokenproxy-state:/var/lib/tokenproxy -e TOKENPROXY_MASTER_KEY -p 127.0.0.1:8080:8080 tokenproxy
#
# The container listens on 0.0.0.0:8080 (CMD below), and tokenproxy refuses a non-loopback
# listener unless the config restricts who may connect: the mounted config MUST set `clients`
# (`allow_cidrs` and/or `api_keys`), e.g. `clients: {allow_cidrs: [172.16.0.0/12]}` for Docker's
# bridge networks. As a sidecar that shares a network namespace with its app (a Kubernetes pod),
# listen on loopback instead and no `clients` are needed: `run --host 127.0.0.1`.
# tests/test_deploy.py checks these conventions and runs the same pip steps in a fresh venv.

FROM python:3.12-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src

# Dependencies first, from pyproject.toml alone, so source edits reuse this layer. Every one of
# them ships binary wheels for CPython 3.12 on glibc, so no compiler is needed here either (slim
# has none: a dependency that needed compiling would fail this step loudly).
COPY pyproject.toml ./
RUN python -c 'import tomllib; project = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
print("\n".join(project["dependencies"] + project["optional-dependencies"]["speed"]))' \
    > requirements.txt \
    && pip wheel --wheel-dir /wheels -r requirements.txt

COPY README.md ./
COPY proxy ./proxy
RUN pip wheel --no-deps --wheel-dir /wheels .


FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only the wheels of stage 1, bind-mounted for this one step (they never become a layer), from
# no index: what runs is exactly what was built. Bytecode is compiled here, at install time,
# so a read-only root filesystem costs nothing at start. (The versions are pinned by the wheels.)
# hadolint ignore=DL3013
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels "tokenproxy[speed]"

RUN groupadd --system --gid 10001 tokenproxy \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin tokenproxy \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/tokenproxy \
    && install -d -m 0755 /etc/tokenproxy

# The config is mounted read-only at /etc/tokenproxy/config.yaml (a ConfigMap, a bind mount).
# state_dir holds the token store (rotated refresh tokens, the local copy of shared tokens,
# worker coordination): keep it across restarts. (Paths, not secrets: "TOKEN" is in the name.)
# hadolint ignore=DL3064
ENV TOKENPROXY_CONFIG=/etc/tokenproxy/config.yaml \
    TOKENPROXY_STATE_DIR=/var/lib/tokenproxy
VOLUME /var/lib/tokenproxy

USER 10001:10001
EXPOSE 8080
# /_proxy/health answers a loopback peer without `clients` credentials. There is no curl in
# slim: the image's own Python asks. (Kubernetes ignores HEALTHCHECK: see deploy/kubernetes/.)
HEALTHCHECK --interval=15s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/_proxy/health', timeout=2).status != 200)"]
ENTRYPOINT ["tokenproxy"]
# --host/--port override listen.host/listen.port of the config file: reachable through a
# published port, and the port HEALTHCHECK and EXPOSE name. Needs `clients` (see the top).
CMD ["run", "--host", "0.0.0.0", "--port", "8080"]

# tokenproxy: slim, non-root, exec-form entrypoint.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, from pyproject.toml alone, so source edits reuse this layer.
COPY pyproject.toml ./
RUN python - <<'PY' > /tmp/requirements.txt
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["speed"]))
PY
RUN pip install -r /tmp/requirements.txt

COPY README.md ./
COPY proxy ./proxy
COPY config ./config
RUN pip install --no-deps . && useradd --system --uid 10001 --no-create-home tokenproxy \
    && install -d -o 10001 -m 0700 /var/lib/tokenproxy

# The token store (rotated refresh tokens, shared tokens): keep it across restarts.
ENV TOKENPROXY_STATE_DIR=/var/lib/tokenproxy
VOLUME /var/lib/tokenproxy
USER 10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/_proxy/health', timeout=2).status != 200)"]
ENTRYPOINT ["tokenproxy"]
CMD ["run"]

# The two commands of the README:  `make demo`  and  `make test`.
# Both create .venv and install tokenproxy into it first (again whenever pyproject.toml changes).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("tokenproxy needs Python 3.11 or newer") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,speed]'
	touch $@

# The certified OpenID provider the tests run against (oidc-provider, from the npm registry).
OIDC := tests/oidc
$(OIDC)/node_modules/.installed: $(OIDC)/package.json
	@if command -v npm >/dev/null 2>&1; then \
	  cd $(OIDC) && npm install --no-audit --no-fund --no-package-lock --loglevel=error && touch node_modules/.installed; \
	else echo "npm not found: the oidc-provider tests will be skipped"; fi

# Real clients the tunnel tests drive (undici, the engine of Node's fetch).
CLIENTS := tests/clients
$(CLIENTS)/node_modules/.installed: $(CLIENTS)/package.json
	@if command -v npm >/dev/null 2>&1; then \
	  cd $(CLIENTS) && npm install --no-audit --no-fund --no-package-lock --loglevel=error && touch node_modules/.installed; \
	else echo "npm not found: the undici tests will be skipped"; fi

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/tokenproxy demo

lint: $(VENV)/.installed
	$(BIN)/ruff check proxy tests benchmarks
	$(BIN)/ruff format --check proxy tests benchmarks
	$(BIN)/mypy proxy

# The client-input suite runs again on aiohttp's pure-Python HTTP parser: both parsers must
# give hostile requests the same answers. The retry tests too: whether an upstream's answer
# began before its connection failed is the response parser's to say.
CLIENT_INPUT := tests/test_lean.py tests/test_server.py tests/test_body.py tests/test_origin.py tests/test_target.py tests/test_access.py tests/test_tunnel.py tests/test_retries.py
# The upstream side: its answers go through the same parser as the clients' requests.
UPSTREAM_INPUT := tests/test_forwarding.py tests/test_reauth.py tests/test_tls.py tests/test_deadlines.py tests/test_intercept.py tests/test_http1.py

test: lint $(OIDC)/node_modules/.installed $(CLIENTS)/node_modules/.installed
	AIOHTTP_NO_EXTENSIONS=1 $(BIN)/pytest -q -n 2 $(CLIENT_INPUT) $(UPSTREAM_INPUT)
	$(BIN)/pytest -n 2

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info $(OIDC)/node_modules $(CLIENTS)/node_modules

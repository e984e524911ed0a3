"""In-process fakes on real loopback sockets: upstreams (recording, raw bytes, TLS), an
identity provider with knobs, and a clock."""

from __future__ import annotations

import asyncio
import email.utils
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
import orjson
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.config.grants import ACCESS_TOKEN_TYPE
from proxy.demo.echo import describe_request, echo
from proxy.demo.idp import DEMO_USERNAME, DemoIdentityProvider, OAuthError, RefreshFamily
from proxy.tokens.endpoint import TokenRequest, TokenResponse
from proxy.tokens.exchange import TOKEN_EXCHANGE_GRANT
from proxy.tokens.jwt_bearer import JWT_BEARER_GRANT
from proxy.tokens.oauth2 import ASSERTION_TYPE, DEVICE_GRANT

Responder = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class RecordingUpstream:
    """The demo echo upstream, recording every request it receives.

    ``respond`` replaces the echo answer for one test (a 302, a slow answer, a stream...).
    """

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.respond: Responder | None = None
        self.url = ""  # set once the server listens

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        self.requests.append(await describe_request(request))
        if self.respond is not None:
            return await self.respond(request)
        return await echo(request)

    @property
    def last(self) -> dict[str, Any]:
        assert self.requests, "the upstream received no request"
        return self.requests[-1]

    def header_values(self, name: str, index: int = -1) -> list[str]:
        return [v for k, v in self.requests[index]["headers"] if k.lower() == name.lower()]


class RawUpstream:
    """An upstream that answers each connection with fixed bytes and records what it read.

    For framing abuse the aiohttp server would refuse to produce, and for checking the exact
    request line on the wire.
    """

    def __init__(
        self, response: bytes | list[bytes], *, then_close: bool = True, delay: float = 0
    ) -> None:
        # Parts of a list are written 0.1 s apart: the proxy relays the first before the next.
        self.parts = [response] if isinstance(response, bytes) else response
        self.then_close = then_close
        self.delay = delay
        self.received: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            self.received.append(head)
            await asyncio.sleep(self.delay)
            for index, part in enumerate(self.parts):
                if index:
                    await asyncio.sleep(0.1)
                writer.write(part)
                await writer.drain()
            if not self.then_close:
                await asyncio.sleep(5)  # hold the connection open; the test decides
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class KeepAliveUpstream:
    """An upstream that reads request after request on each connection and answers the n-th
    request (counted over all connections) with ``answers(n)``; it records each request's
    raw bytes, and how many connections it was given.

    An answer ending in ``CLOSE`` is followed by closing the connection.
    """

    CLOSE = b"<close>"

    def __init__(self, answers: Callable[[int], bytes], host: str = "127.0.0.1") -> None:
        self.answers = answers
        self.host = host
        self.requests: list[bytes] = []
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> KeepAliveUpstream:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            while True:
                request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                request += await _request_body(reader, request)
                index = len(self.requests)
                self.requests.append(request)
                answer = self.answers(index)
                writer.write(answer.removesuffix(self.CLOSE))
                await writer.drain()
                if answer.endswith(self.CLOSE):
                    return
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def _request_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    """The body's raw bytes as framed on the wire (Content-Length or chunked)."""
    lines = head.lower().split(b"\r\n")
    length = next((int(line[15:]) for line in lines if line.startswith(b"content-length:")), 0)
    if b"transfer-encoding: chunked" not in lines:
        return await reader.readexactly(length)
    body = b""
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.strip(), 16)
        body += size_line + await reader.readexactly(size + 2)
        if size == 0:
            return body


class FakeIdP(DemoIdentityProvider):
    """The demo identity provider, with knobs and counters for tests.

    - ``calls``: every request (path, form, headers), in order; ``max_active``: the most
      requests it was ever answering at once;
    - ``delay``: seconds before each answer; ``script``: answers for the next calls, used
      before falling back to real OAuth2 behaviour;
    - ``overrides``: fields merged into every issued token (``None`` removes a field);
    - ``reuse_detected``: a rotated refresh token was presented again (RFC 9700 §4.14);
    - RFC 7523 grants: an assertion is verified with ``bearer_keys[iss]`` (a public key),
      its ``aud`` must be the token URL or one of ``bearer_audiences``, it must be valid now
      (on ``clock``), live at most an hour, and carry a ``jti`` never seen before; the
      verified claims and header go into the call (``grant_claims``, ``grant_header``);
    - RFC 8693 exchanges: the subject must be a token it issued (type access_token) or one
      of ``subject_tokens`` (value -> type), an actor one of ``actor_tokens``; what was
      asked goes into the call (``exchange``), and the answer names the requested type.
    """

    def __init__(self, expires_in: int = 300) -> None:
        super().__init__(expires_in)
        self.assertion_keys: dict[str, Any] = {}  # client id -> verification key or secret
        self.tls_clients: set[str] = set()  # client ids that authenticate by certificate
        self.seen_jti: set[str] = set()
        self.calls: list[dict[str, Any]] = []
        self.delay = 0.0
        self.script: list[Responder] = []
        self.overrides: dict[str, Any] = {}
        self.active = self.max_active = 0
        self.reuse_detected = False
        self.issued: set[str] = set()  # every access token handed out
        self.devices: dict[str, str | None] = {}  # device code -> approving subject, or None
        self.device_codes: dict[str, str] = {}  # user code -> device code
        self.device_answers: list[str] = []  # errors for the next device-code polls
        self.device_interval, self.device_expires_in = 0.1, 60
        self.metadata: dict[str, dict[str, Any]] = {}  # well-known path -> metadata served
        self.url = ""  # set once the server listens
        self.clock: FakeClock | None = None  # when set, answers carry its time as ``Date``
        self.bearer_keys: dict[str, Any] = {}  # assertion issuer -> its public key
        self.bearer_audiences: set[str] = set()  # accepted besides the token URL
        self.subject_tokens: dict[str, str] = {}  # subject token -> its type
        self.actor_tokens: dict[str, str] = {}  # actor token -> its type

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "GET" and request.path in self.metadata:
            self.calls.append({"method": "GET", "path": request.path, "form": {}, "headers": {}})
            return web.json_response(self.metadata[request.path])
        if request.method == "GET" and (
            "response_type" in request.query or "Authorization" in request.headers
        ):  # an authorization request, or a userinfo request
            query, headers = dict(request.query), dict(request.headers)
            self.calls.append({"method": "GET", "path": request.path, "query": query, "form": {}})
            self.calls[-1] |= {"headers": headers, "browser_flow": True}
            return await super().__call__(request)
        is_json = request.content_type == "application/json"
        pairs = [] if is_json else [(k, str(v)) for k, v in (await request.post()).items()]
        self.calls.append(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "form": dict(pairs),
                "pairs": pairs,
                "json": await request.json() if is_json else None,
                "headers": dict(request.headers),
            }
        )
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.script:
                response = await self.script.pop(0)(request)
            else:
                response = await super().__call__(request)
        finally:
            self.active -= 1
        if self.clock is not None and not response.prepared:
            response.headers.setdefault(
                "Date", email.utils.formatdate(self.clock.wall(), usegmt=True)
            )
        return response

    def authenticate_client(self, request: web.BaseRequest, form: dict[str, str]) -> str:
        """Also RFC 7523 assertions and RFC 8705 certificates, checked as a provider would."""
        client_id = form.get("client_id", "")
        if "client_assertion" in form:
            if form.get("client_assertion_type") != ASSERTION_TYPE:
                raise OAuthError("invalid_client", 401)
            try:
                claims = jwt.decode(
                    form["client_assertion"],
                    self.assertion_keys.get(client_id),
                    algorithms=["RS256", "PS256", "ES256", "HS256"],
                    audience=str(request.url.with_query(None)),
                    issuer=client_id,
                    options={"require": ["exp", "iat", "jti", "sub"]},
                )
            except jwt.PyJWTError:
                raise OAuthError("invalid_client", 401) from None
            if claims["sub"] != client_id or claims["jti"] in self.seen_jti:
                raise OAuthError("invalid_client", 401)
            if claims["exp"] - claims["iat"] > 300:
                raise OAuthError("invalid_client", 401, "assertion lives too long")
            self.seen_jti.add(claims["jti"])
            self.calls[-1]["assertion_header"] = jwt.get_unverified_header(form["client_assertion"])
            return client_id
        if client_id in self.tls_clients:
            peer = request.transport.get_extra_info("peercert") if request.transport else None
            subject = dict(item[0] for item in (peer or {}).get("subject", ()))
            if subject.get("commonName") != client_id or "client_secret" in form:
                raise OAuthError("invalid_client", 401)
            return client_id
        return super().authenticate_client(request, form)

    def grant(self, request: web.BaseRequest, form: dict[str, str]) -> dict[str, Any]:
        """Also RFC 8628: ``POST /device`` starts a device authorization; the token endpoint
        answers its device code ``authorization_pending`` until :meth:`approve` (or an
        answer queued in ``device_answers``, such as ``slow_down``)."""
        if request.path == "/device":
            self.authenticate_client(request, form)
            device_code, user_code = secrets.token_urlsafe(16), secrets.token_hex(4).upper()
            self.devices[device_code] = None
            self.device_codes[user_code] = device_code
            return {
                "device_code": device_code,
                "user_code": user_code,
                "verification_uri": f"{self.url}/activate",
                "verification_uri_complete": f"{self.url}/activate?user_code={user_code}",
                "expires_in": self.device_expires_in,
                "interval": self.device_interval,
            }
        if form.get("grant_type") == JWT_BEARER_GRANT:
            return self.bearer_grant(request, form)
        if form.get("grant_type") == TOKEN_EXCHANGE_GRANT:
            return self.exchange(request, form)
        if form.get("grant_type") == DEVICE_GRANT:
            self.authenticate_client(request, form)
            code = form.get("device_code", "")
            if code not in self.devices:
                raise OAuthError("invalid_grant", description="unknown device code")
            if self.device_answers:
                raise OAuthError(self.device_answers.pop(0))
            decision = self.devices[code]
            if decision is None:
                raise OAuthError("authorization_pending")
            del self.devices[code]  # a device code is good for one token
            if decision == "denied":
                raise OAuthError("access_denied")
            return self.issue(decision, with_refresh=True)
        return super().grant(request, form)

    def client_if_any(self, request: web.BaseRequest, form: dict[str, str]) -> str | None:
        """The client, if the request authenticates one (the extension grants need none)."""
        presented = ("client_id", "client_secret", "client_assertion") & form.keys()
        if presented or "Authorization" in request.headers:
            return self.authenticate_client(request, form)
        return None

    def bearer_grant(self, request: web.BaseRequest, form: dict[str, str]) -> dict[str, Any]:
        """RFC 7523 §2.1 and §3, as strictly as a provider checks."""
        self.client_if_any(request, form)
        assertion = form.get("assertion", "")
        try:
            header = jwt.get_unverified_header(assertion)
            issuer = jwt.decode(assertion, options={"verify_signature": False}).get("iss")
            claims = jwt.decode(
                assertion,
                self.bearer_keys.get(issuer),
                algorithms=["RS256", "PS256", "ES256"],
                audience=[str(request.url.with_query(None)), *self.bearer_audiences],
                options={
                    "require": ["iss", "aud", "iat", "exp", "jti"],
                    "verify_exp": False,  # checked below, on this provider's clock
                    "verify_iat": False,
                },
            )
        except (jwt.PyJWTError, TypeError, ValueError):
            raise OAuthError("invalid_grant", description="bad assertion") from None
        now = self.clock.wall() if self.clock is not None else time.time()
        if not claims["iat"] - 60 <= now < claims["exp"]:
            raise OAuthError("invalid_grant", description="assertion expired or not yet valid")
        if claims["exp"] - claims["iat"] > 3600:
            raise OAuthError("invalid_grant", description="assertion lives too long")
        if claims["jti"] in self.seen_jti:
            raise OAuthError("invalid_grant", description="assertion replayed")
        self.seen_jti.add(claims["jti"])
        self.calls[-1] |= {"grant_claims": claims, "grant_header": header}
        scope = claims.get("scope") or form.get("scope")
        return self.issue(claims.get("sub", claims["iss"]), with_refresh=False, scope=scope)

    def exchange(self, request: web.BaseRequest, form: dict[str, str]) -> dict[str, Any]:
        """RFC 8693 §2.1: the subject (and actor) must be tokens it knows, of their types."""
        self.client_if_any(request, form)
        subject = form.get("subject_token", "")
        known = ACCESS_TOKEN_TYPE if subject in self.issued else self.subject_tokens.get(subject)
        if known is None:
            raise OAuthError("invalid_grant", description="unknown subject token")
        if form.get("subject_token_type") != known:
            raise OAuthError("invalid_request", description="wrong subject_token_type")
        actor = form.get("actor_token")
        if (actor is None) != ("actor_token_type" not in form):
            raise OAuthError("invalid_request", description="actor_token_type without actor")
        if actor is not None and self.actor_tokens.get(actor) != form["actor_token_type"]:
            raise OAuthError("invalid_grant", description="unknown actor token")
        requested = form.get("requested_token_type", ACCESS_TOKEN_TYPE)
        self.calls[-1]["exchange"] = {
            "subject_token": subject,
            "actor_token": actor,
            "audience": form.get("audience"),
            "resource": [value for name, value in self.calls[-1]["pairs"] if name == "resource"],
            "requested_token_type": form.get("requested_token_type"),
        }
        subject_of = self.subjects.get(subject, "exchanged-subject")
        return self.issue(subject_of, with_refresh=False, scope=form.get("scope"), typed=requested)

    def approve(self, user_code: str, subject: str = DEMO_USERNAME, *, deny: bool = False) -> None:
        self.devices[self.device_codes[user_code]] = "denied" if deny else subject

    def seed_refresh_token(self, subject: str = DEMO_USERNAME, value: str | None = None) -> str:
        """A fresh refresh token, as an authorization-code bootstrap would have produced."""
        refresh_token = value or secrets.token_urlsafe(24)
        self.families[refresh_token] = RefreshFamily(subject, refresh_token)
        return refresh_token

    def issue(
        self,
        subject: str,
        *,
        with_refresh: bool,
        scope: str | None = None,
        typed: str | None = None,
    ) -> dict[str, Any]:
        """``typed``: the ``issued_token_type`` of an exchange's answer."""
        token = super().issue(subject, with_refresh=with_refresh, scope=scope)
        self.issued.add(token["access_token"])
        if typed is not None:
            token["issued_token_type"] = typed
        for key, value in self.overrides.items():
            if value is None:
                token.pop(key, None)
            else:
                token[key] = value
        return token

    def refresh(self, presented: str) -> dict[str, Any]:
        try:
            return super().refresh(presented)
        except OAuthError as exc:
            self.reuse_detected |= exc.description == "refresh token reuse detected"
            raise

    @property
    def grants(self) -> list[str]:
        return [call["form"].get("grant_type", "") for call in self.calls]


def answer(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Responder:
    """A scripted IdP or upstream answer: JSON for dicts and lists, raw for bytes/str."""

    async def respond(request: web.BaseRequest) -> web.StreamResponse:
        if isinstance(body, dict | list):
            return web.json_response(body, status=status, headers=headers)
        text = body.encode() if isinstance(body, str) else body
        return web.Response(status=status, body=text, headers=headers)

    return respond


class FakeClock:
    """Monotonic and wall time that move only when told; ``sleep`` advances them at once."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.wall_offset = 1_800_000_000.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + self.wall_offset

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        self.now += seconds


class TLSServer:
    """An aiohttp low-level server over TLS on loopback, for upstreams and providers."""

    def __init__(self, handler: Any, context: ssl.SSLContext) -> None:
        self.handler, self.context = handler, context
        self.url = ""
        self._runner: web.ServerRunner | None = None

    async def start(self) -> TLSServer:
        self._runner = web.ServerRunner(web.Server(self.handler, access_log=None))
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.context).start()
        self.url = f"https://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class SteppedClock(FakeClock):
    """A fake clock whose ``sleep`` waits until the test moves time past its deadline.

    For simulations where a slow provider and steady traffic share one timeline: ``advance``
    moves time, wakes every sleeper due by then, and lets the loop run what they started.
    """

    def __init__(self) -> None:
        super().__init__()
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def wall(self) -> float:
        # Whole seconds, like the simulated provider's exact lifetimes: the manager's
        # allowance for providers that count whole seconds is tested on its own.
        return float(int(super().wall()))

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, future))
        await future

    async def step(self, seconds: float) -> None:
        self.now += seconds
        due = [f for deadline, f in self._sleepers if deadline <= self.now]
        self._sleepers = [(d, f) for d, f in self._sleepers if d > self.now]
        for future in due:
            if not future.done():
                future.set_result(None)
        await settle()


async def settle(rounds: int = 10) -> None:
    """Let tasks that are ready run to their next real wait (bounded: ``rounds`` passes)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class FakeTokenEndpoint:
    """A token endpoint without sockets, for the token manager's unit tests: it records each
    :class:`TokenRequest`, takes ``latency`` seconds of the clock to answer, and answers
    from ``script`` first, then with a fresh token of ``lifetime`` seconds."""

    def __init__(self, clock: FakeClock, lifetime: float = 300, latency: float = 0) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.latency = latency
        self.requests: list[TokenRequest] = []
        self.script: list[tuple[int, Any]] = []

    async def __call__(self, request: TokenRequest) -> TokenResponse:
        self.requests.append(request)
        await self.clock.sleep(self.latency)
        status, body = (
            self.script.pop(0)
            if self.script
            else (200, {"access_token": f"at-{len(self.requests)}", "expires_in": self.lifetime})
        )
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        headers = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))
        return TokenResponse(status, headers, raw)

    def forms(self, name: str) -> list[str | None]:
        return [(r.form or {}).get(name) for r in self.requests]


def signing_key(alg: str = "RS256") -> tuple[str, Any]:
    """A new private key for ``alg`` as unencrypted PKCS#8 PEM, and its public key."""
    key: Any = (
        ec.generate_private_key(ec.SECP256R1())
        if alg == "ES256"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return pem, key.public_key()


SERVICE_ACCOUNT_EMAIL = "tokenproxy@example-project.iam.gserviceaccount.com"


def service_account_file(path: Path, token_uri: str, pem: str, **fields: Any) -> Path:
    """A Google-style service-account key file (``fields`` replace or, as None, drop)."""
    data = {
        "type": "service_account",
        "project_id": "example-project",
        "private_key_id": "sa-key-1",
        "private_key": pem,
        "client_email": SERVICE_ACCOUNT_EMAIL,
        "client_id": "1234567890",
        "token_uri": token_uri,
        **fields,
    }
    path.write_bytes(orjson.dumps({k: v for k, v in data.items() if v is not None}))
    return path


def example_material(directory: Path, token_uri: str) -> tuple[dict[str, str], Any]:
    """The key files, service-account file and subject token that config/examples/ name
    by ``${VAR}`` (made now, never committed): the environment to set, and the public key
    that verifies them all."""
    pem, public = signing_key("RS256")
    key_file = directory / "jwt-bearer.key"
    key_file.write_text(pem)
    subject = directory / "workload-token"
    subject.write_text("workload-identity-token-from-the-platform")
    env = {
        "SALESFORCE_KEY_FILE": str(key_file),
        "DOCUSIGN_KEY_FILE": str(key_file),
        "GOOGLE_APPLICATION_CREDENTIALS": str(
            service_account_file(directory / "service-account.json", token_uri, pem)
        ),
        "WORKLOAD_TOKEN_FILE": str(subject),
    }
    return env, public

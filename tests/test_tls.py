"""TLS and strong client authentication through real handshakes on loopback (trustme CAs)."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import tempfile
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
import yaml
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from proxy.config.loader import load_settings, validate
from proxy.config.tls import TLSConfig
from proxy.demo.echo import echo
from proxy.egress.tls import client_ssl_context
from proxy.errors import ConfigError
from tests.conftest import StartProxy, check_config, connector, oauth2_connector
from tests.fakes import FakeIdP, TLSServer, answer, signing_key

Serve = Callable[..., Awaitable[TLSServer]]
MTLS_EXAMPLE = yaml.safe_load(
    (Path(__file__).resolve().parent.parent / "config" / "examples" / "mtls.yaml").read_text()
)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def other_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    path.write_bytes(ca.cert_pem.bytes())
    return str(path)


def server_context(cert: trustme.LeafCert, client_ca: trustme.CA | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(context)
    if client_ca is not None:  # require a client certificate from this CA
        context.verify_mode = ssl.CERT_REQUIRED
        client_ca.configure_trust(context)
    return context


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[TLSServer] = []

    async def start(handler: Any, context: ssl.SSLContext) -> TLSServer:
        server = await TLSServer(handler, context).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


async def peer_subject(request: web.BaseRequest) -> web.StreamResponse:
    """An upstream that tells which client certificate it saw."""
    peer = request.transport.get_extra_info("peercert") if request.transport else None
    subject = dict(item[0] for item in (peer or {}).get("subject", ()))
    return web.json_response({"client": subject.get("commonName")})


async def get(client: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with client.get(url) as response:
        return response.status, await response.json()


@pytest.mark.parametrize("source", ["ca_file", "ca_pem", "system_ca"])
async def test_custom_ca(
    start_proxy: StartProxy,
    serve: Serve,
    client: aiohttp.ClientSession,
    ca: trustme.CA,
    ca_file: str,
    source: str,
) -> None:
    upstream = await serve(echo, server_context(ca.issue_cert("127.0.0.1")))
    tls = {
        "ca_file": {"ca_file": ca_file},
        "ca_pem": {"ca_pem": ca.cert_pem.bytes().decode()},
        "system_ca": {"ca_file": ca_file, "system_ca": True},
    }[source]
    proxy = await start_proxy({"connectors": {"api": connector(upstream.url, tls=tls)}})
    status, body = await get(client, f"{proxy.url}/api/x")
    assert status == 200 and body["path"] == "/x"


def tls_1_0_only(context: ssl.SSLContext) -> ssl.SSLContext:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1
    return context


@pytest.mark.parametrize("hop", ["upstream", "token endpoint"])
@pytest.mark.parametrize(
    ("issue", "verdict"),
    [
        (lambda ca, other: other.issue_cert("127.0.0.1"), "unable to get local issuer certificate"),
        (lambda ca, other: ca.issue_cert("api.internal"), "IP address mismatch"),
        (
            lambda ca, other: ca.issue_cert(
                "127.0.0.1", not_after=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
            ),
            "certificate has expired",
        ),
        (lambda ca, other: ca.issue_cert("127.0.0.1"), None),  # served over TLS 1.0 only
    ],
    ids=["unknown-ca", "wrong-host", "expired", "tls-1.0-only"],
)
async def test_certificate_failures_say_what_failed(
    start_proxy: StartProxy,
    serve: Serve,
    client: aiohttp.ClientSession,
    aiohttp_raw_server: Any,
    ca: trustme.CA,
    other_ca: trustme.CA,
    ca_file: str,
    issue: Callable[[trustme.CA, trustme.CA], trustme.LeafCert],
    verdict: str | None,
    hop: str,
) -> None:
    """Each failure is refused (no fallback to unverified), saying what failed and where."""
    context = server_context(issue(ca, other_ca))
    if verdict is None:
        context = tls_1_0_only(context)
    tls = {"ca_file": ca_file}
    if hop == "upstream":
        config = connector((await serve(echo, context)).url, tls=tls)
    else:
        idp = FakeIdP()
        idp.url = (await serve(idp, context)).url
        plain_upstream = str((await aiohttp_raw_server(echo, access_log=None)).make_url(""))
        config = connector(
            plain_upstream, auth={**oauth2_connector("", idp.url)["auth"], "tls": tls}
        )
    proxy = await start_proxy({"connectors": {"api": config}})
    async with client.get(f"{proxy.url}/api/x") as response:
        assert response.status == 502
        body = await response.json()
        proxy_status = response.headers["Proxy-Status"]
    if verdict is None:
        # Our floor is TLS 1.2; OpenSSL 3 will not even serve 1.0 here and resets the
        # handshake. Either way the connection is refused, never downgraded.
        assert body["message"] in {f"cannot connect to the {hop}", f"TLS with the {hop} failed"}
        return
    assert body["error"] == ("upstream_tls_error" if hop == "upstream" else "token_endpoint_error")
    details = "" if hop == "upstream" else '; details="token endpoint"'
    assert proxy_status == f"tokenproxy; error=tls_certificate_error{details}"
    assert body["message"].startswith(
        f"TLS with the {hop} failed: certificate verification failed: "
    )
    assert verdict in body["message"]


async def test_server_name_overrides_sni_and_the_verified_name(
    start_proxy: StartProxy,
    serve: Serve,
    client: aiohttp.ClientSession,
    ca: trustme.CA,
    ca_file: str,
) -> None:
    seen: list[str | None] = []
    context = server_context(ca.issue_cert("api.internal"))
    context.sni_callback = lambda sock, name, ctx: seen.append(name)  # type: ignore[assignment,misc]
    upstream = await serve(echo, context)
    tls = {"ca_file": ca_file, "server_name": "api.internal"}
    proxy = await start_proxy({"connectors": {"api": connector(upstream.url, tls=tls)}})
    assert (await get(client, f"{proxy.url}/api/x"))[0] == 200
    assert seen == ["api.internal"]


async def test_insecure_skip_verify_works_and_is_loud(
    start_proxy: StartProxy,
    serve: Serve,
    client: aiohttp.ClientSession,
    other_ca: trustme.CA,
    write_config: Callable[[dict[str, Any]], Path],
) -> None:
    upstream = await serve(echo, server_context(other_ca.issue_cert("wrong.example")))
    config = {"connectors": {"api": connector(upstream.url, tls={"insecure_skip_verify": True})}}
    proxy = await start_proxy(config)
    assert (await get(client, f"{proxy.url}/api/x"))[0] == 200
    _, body = await get(client, f"{proxy.url}/_proxy/connectors")
    assert body["connectors"][0]["tls"]["insecure_skip_verify"] is True
    assert load_settings(write_config(config)).warnings == [
        "connectors.api.tls.insecure_skip_verify: certificates are NOT verified; anyone on the "
        "path can read the credentials"
    ]


def client_identity(ca: trustme.CA, tmp_path: Path, source: str) -> dict[str, str]:
    """The client certificate 'tokenproxy-client' in each supported form, as a tls block."""
    leaf = ca.issue_cert("tokenproxy-client", common_name="tokenproxy-client")
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
    if source == "p12":
        from cryptography import x509

        bundle = pkcs12.serialize_key_and_certificates(
            b"client",
            key,  # type: ignore[arg-type]
            x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()),
            None,
            serialization.BestAvailableEncryption(b"p12-pass"),
        )
        (tmp_path / "client.p12").write_bytes(bundle)
        return {"p12_file": str(tmp_path / "client.p12"), "p12_password": "p12-pass"}
    if source == "inline":
        return {"cert_pem": chain.decode(), "key_pem": leaf.private_key_pem.bytes().decode()}
    (tmp_path / "client.crt").write_bytes(chain)
    if source == "encrypted-files":
        encrypted = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"key-pass"),
        )
        (tmp_path / "client.key").write_bytes(encrypted)
        return {
            "cert_file": str(tmp_path / "client.crt"),
            "key_file": str(tmp_path / "client.key"),
            "key_password": "key-pass",
        }
    (tmp_path / "client.key").write_bytes(leaf.private_key_pem.bytes())
    return {"cert_file": str(tmp_path / "client.crt"), "key_file": str(tmp_path / "client.key")}


@pytest.mark.parametrize("source", ["files", "encrypted-files", "inline", "p12"])
async def test_client_certificates(
    start_proxy: StartProxy,
    serve: Serve,
    client: aiohttp.ClientSession,
    ca: trustme.CA,
    ca_file: str,
    tmp_path: Path,
    source: str,
) -> None:
    upstream = await serve(peer_subject, server_context(ca.issue_cert("127.0.0.1"), client_ca=ca))
    tls = {"ca_file": ca_file, **client_identity(ca, tmp_path, source)}
    proxy = await start_proxy({"connectors": {"api": connector(upstream.url, tls=tls)}})
    assert await get(client, f"{proxy.url}/api/x") == (200, {"client": "tokenproxy-client"})


@pytest.mark.parametrize("with_certificate", [False, True], ids=["none", "untrusted"])
async def test_a_refused_client_certificate_is_a_502_that_says_so(
    start_proxy: StartProxy,
    serve: Serve,
    client: aiohttp.ClientSession,
    ca: trustme.CA,
    other_ca: trustme.CA,
    ca_file: str,
    tmp_path: Path,
    with_certificate: bool,
) -> None:
    upstream = await serve(peer_subject, server_context(ca.issue_cert("127.0.0.1"), client_ca=ca))
    tls = {
        "ca_file": ca_file,
        **(client_identity(other_ca, tmp_path, "files") if with_certificate else {}),
    }
    proxy = await start_proxy({"connectors": {"api": connector(upstream.url, tls=tls)}})
    status, body = await get(client, f"{proxy.url}/api/x")
    assert status == 502
    assert "client certificate" in body["message"]


@pytest.mark.parametrize(
    ("tls", "problem"),
    [
        (
            {"p12_file": "P12", "p12_password": "sec_CANARY_p12"},
            "tls.p12_password: wrong password, or not a PKCS#12 bundle",
        ),
        (
            {"cert_file": "CERT", "key_file": "/nonexistent/key.pem"},
            "tls.key_file: cannot read /nonexistent/key.pem (No such file or directory)",
        ),
        (
            {"cert_file": "CERT", "key_file": "ENCRYPTED_KEY"},
            "tls.key_password: the key is encrypted: set key_password",
        ),
        (
            {"cert_file": "CERT", "key_file": "ENCRYPTED_KEY", "key_password": "sec_CANARY_key"},
            "tls.key_password: wrong password, or not a PEM private key",
        ),
        (
            {"cert_file": "OTHER_CERT", "key_file": "KEY"},
            "tls: the client certificate does not belong to its key",
        ),
        ({"ca_pem": "not a certificate"}, "tls.ca_pem: holds no PEM CA certificate"),
        ({"cert_file": "CERT"}, "tls: a client certificate needs both its certificate and its key"),
    ],
)
def test_unusable_tls_material_is_a_config_error_naming_the_field(
    write_config: Callable[[dict[str, Any]], Path],
    ca: trustme.CA,
    tmp_path: Path,
    tls: dict[str, str],
    problem: str,
) -> None:
    identity = client_identity(ca, tmp_path, "encrypted-files")
    files = {
        "CERT": identity["cert_file"],
        "ENCRYPTED_KEY": identity["key_file"],
        "P12": client_identity(ca, tmp_path / "..", "p12")["p12_file"],
    }
    other = ca.issue_cert("someone-else")
    (tmp_path / "other.crt").write_bytes(other.cert_chain_pems[0].bytes())
    (tmp_path / "plain.key").write_bytes(
        serialization.load_pem_private_key(
            Path(identity["key_file"]).read_bytes(), b"key-pass"
        ).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files["OTHER_CERT"], files["KEY"] = str(tmp_path / "other.crt"), str(tmp_path / "plain.key")
    tls = {k: files.get(v, v) for k, v in tls.items()}
    path = write_config({"connectors": {"api": connector("https://api.example.com", tls=tls)}})
    with pytest.raises(ConfigError) as info:
        check_config(path)
    assert info.value.problems == [f"connectors.api.{problem}"]
    assert "CANARY" not in str(info.value)


async def tls_idp(serve: Serve, ca: trustme.CA, client_ca: trustme.CA | None = None) -> FakeIdP:
    idp = FakeIdP()
    server = await serve(idp, server_context(ca.issue_cert("127.0.0.1"), client_ca=client_ca))
    idp.url = server.url
    return idp


async def test_auth_tls_applies_to_the_token_endpoint_only(
    start_proxy: StartProxy,
    serve: Serve,
    client: aiohttp.ClientSession,
    aiohttp_raw_server: Any,
    ca: trustme.CA,
    ca_file: str,
) -> None:
    idp = await tls_idp(serve, ca)
    plain_upstream = await aiohttp_raw_server(echo, access_log=None)
    auth = oauth2_connector("", idp.url)["auth"]  # client credentials, demo client
    upstream_url = str(plain_upstream.make_url("")).rstrip("/")
    without = {"api": connector(upstream_url, auth=auth)}
    proxy = await start_proxy({"connectors": without})
    status, body = await get(client, f"{proxy.url}/api/x")
    assert (status, body["error"]) == (502, "token_endpoint_error")
    assert body["message"].startswith(
        "TLS with the token endpoint failed: certificate verification failed"
    )
    with_tls = {
        "api": connector(upstream_url, route="/api", auth={**auth, "tls": {"ca_file": ca_file}})
    }
    proxy = await start_proxy({"connectors": with_tls})
    assert (await get(client, f"{proxy.url}/api/x"))[0] == 200


async def test_tls_client_auth(
    start_proxy: StartProxy,
    serve: Serve,
    client: aiohttp.ClientSession,
    aiohttp_raw_server: Any,
    ca: trustme.CA,
    ca_file: str,
    tmp_path: Path,
) -> None:
    idp = await tls_idp(serve, ca, client_ca=ca)
    idp.tls_clients.add("tokenproxy-client")
    upstream = await aiohttp_raw_server(echo, access_log=None)
    auth = {
        "type": "oauth2",
        "grant": "client_credentials",
        "token_url": f"{idp.url}/token",
        "client_id": "tokenproxy-client",
        "client_auth": "tls_client_auth",
        "tls": {"ca_file": ca_file, **client_identity(ca, tmp_path, "files")},
    }
    proxy = await start_proxy(
        {"connectors": {"api": connector(str(upstream.make_url("")).rstrip("/"), auth=auth)}}
    )
    assert (await get(client, f"{proxy.url}/api/x"))[0] == 200
    assert idp.calls[0]["form"] == {
        "grant_type": "client_credentials",
        "client_id": "tokenproxy-client",
    }
    assert "Authorization" not in idp.calls[0]["headers"]


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256", "HS256"])
async def test_signed_client_assertions(
    start_proxy: StartProxy,
    upstream: Any,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    alg: str,
) -> None:
    auth: dict[str, Any] = {
        "type": "oauth2",
        "grant": "client_credentials",
        "token_url": f"{idp.url}/token",
        "client_id": "signing-client",
    }
    if alg == "HS256":
        auth.update(
            client_auth="client_secret_jwt", client_secret="shared-secret-of-32-bytes-length"
        )
        idp.assertion_keys["signing-client"] = "shared-secret-of-32-bytes-length"
    else:
        pem, public = signing_key(alg)
        auth.update(
            client_auth="private_key_jwt", private_key=pem, key_id="key-2026", signing_alg=alg
        )
        idp.assertion_keys["signing-client"] = public
    proxy = await start_proxy({"connectors": {"api": connector(upstream.url, auth=auth)}})
    async with client.post(f"{proxy.url}/_proxy/connectors/api/refresh") as response:
        assert response.status == 200  # first token
    async with client.post(f"{proxy.url}/_proxy/connectors/api/refresh") as response:
        assert response.status == 200  # a second one: the provider refuses a reused jti
    assert len(idp.calls) == 2
    header = idp.calls[0]["assertion_header"]
    assert header["alg"] == alg
    assert header.get("kid") == (None if alg == "HS256" else "key-2026")
    assert "client_secret" not in idp.calls[0]["form"]
    assert "Authorization" not in idp.calls[0]["headers"]


class ConnectProxy:
    """A forward proxy on loopback: CONNECT tunnels, plain absolute-form forwarding; it
    records each request line and Proxy-Authorization it saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> ConnectProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ")
            auth = next(
                (
                    line.split(":", 1)[1].strip()
                    for line in lines
                    if line.lower().startswith("proxy-authorization:")
                ),
                None,
            )
            self.seen.append((f"{method} {target}", auth))
            host, port = (
                target.split(":") if method == "CONNECT" else target.split("/")[2].split(":")
            )
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            if method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            else:
                up_writer.write(head)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        finally:
            sink.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


async def test_http_proxy_for_upstream_and_token_endpoint(
    start_proxy: StartProxy,
    serve: Serve,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    ca: trustme.CA,
    ca_file: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    corporate = await ConnectProxy().start()
    try:
        upstream = await serve(echo, server_context(ca.issue_cert("127.0.0.1")))
        auth = oauth2_connector("", idp.url)["auth"]  # client credentials, demo client
        settings = connector(upstream.url, auth=auth, tls={"ca_file": ca_file})
        settings["http_proxy"] = f"http://corp:sec_CANARY_proxy@127.0.0.1:{corporate.port}"
        proxy = await start_proxy({"connectors": {"api": settings}})
        status, body = await get(client, f"{proxy.url}/api/x")
        assert status == 200 and body["path"] == "/x"
        idp_port, upstream_port = idp.url.rsplit(":", 1)[1], upstream.url.rsplit(":", 1)[1]
        assert [line for line, _ in corporate.seen] == [
            f"POST {idp.url}/token",  # plain http to the provider: absolute form
            f"CONNECT 127.0.0.1:{upstream_port}",  # https upstream: a tunnel
        ]
        assert {auth for _, auth in corporate.seen} == {"Basic Y29ycDpzZWNfQ0FOQVJZX3Byb3h5"}
        assert idp_port
        status, described = await get(client, f"{proxy.url}/_proxy/connectors")
        assert described["connectors"][0]["http_proxy"] == f"http://127.0.0.1:{corporate.port}"
        assert "CANARY" not in caplog.text
    finally:
        await corporate.close()


async def test_https_token_endpoint_answers_with_errors_too(
    start_proxy: StartProxy,
    serve: Serve,
    client: aiohttp.ClientSession,
    ca: trustme.CA,
    ca_file: str,
) -> None:
    idp = await tls_idp(serve, ca)
    idp.script.append(answer(401, {"error": "invalid_client"}))
    auth = oauth2_connector("", idp.url)["auth"]  # client credentials, demo client
    proxy = await start_proxy(
        {
            "connectors": {
                "api": connector("https://127.0.0.1:9", auth=auth, tls={"ca_file": ca_file})
            }
        }
    )
    status, body = await get(client, f"{proxy.url}/api/x")
    assert (status, body["message"]) == (
        502,
        "the token endpoint refused the request (401 invalid_client)",
    )


def test_client_keys_touch_disk_only_encrypted_and_briefly(
    ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ssl loads keys only from files: the one written is re-encrypted, private, and gone."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen: list[tuple[int, int, bytes]] = []
    original = ssl.SSLContext.load_cert_chain

    def spy(self: ssl.SSLContext, certfile: Any, keyfile: Any = None, password: Any = None) -> None:
        key = Path(keyfile)
        seen.append(
            (key.parent.stat().st_mode & 0o777, key.stat().st_mode & 0o777, key.read_bytes())
        )
        original(self, certfile, keyfile, password)

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)
    identity = client_identity(ca, tmp_path / "..", "p12")
    client_ssl_context(validate(TLSConfig, identity), "tls")
    ((folder_mode, file_mode, written),) = seen
    assert (folder_mode, file_mode) == (0o700, 0o600)
    assert written.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert not list(tmp_path.glob("tokenproxy-tls-*"))


def mtls_material(folder: Path, ca: trustme.CA | None = None) -> dict[str, str]:
    """The ${ERP_*} variables of config/examples/mtls.yaml, as real files under ``folder``."""
    ca = ca or trustme.CA()
    (folder / "erp-ca.pem").write_bytes(ca.cert_pem.bytes())
    identity = client_identity(ca, folder, "p12")
    return {
        "ERP_CA_FILE": str(folder / "erp-ca.pem"),
        "ERP_CLIENT_P12": identity["p12_file"],
        "ERP_P12_PASSWORD": identity["p12_password"],
    }


async def test_the_mtls_example_end_to_end(
    start_proxy: StartProxy,
    serve: Serve,
    client: aiohttp.ClientSession,
    ca: trustme.CA,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in mtls_material(tmp_path, ca).items():
        monkeypatch.setenv(name, value)
    idp = await tls_idp(serve, ca, client_ca=ca)
    idp.tls_clients.add("tokenproxy-client")
    upstream = await serve(peer_subject, server_context(ca.issue_cert("127.0.0.1"), client_ca=ca))
    example = yaml.safe_load(
        (Path(__file__).parent.parent / "config/examples/mtls.yaml").read_text()
    )
    erp = example["connectors"]["erp"]
    erp["upstream"] = f"{upstream.url}/api"
    erp["auth"]["token_url"] = f"{idp.url}/oauth2/token"
    proxy = await start_proxy(example)
    assert await get(client, f"{proxy.url}/erp/x") == (200, {"client": "tokenproxy-client"})
    assert idp.calls[0]["form"] == {
        "grant_type": "client_credentials",
        "client_id": "tokenproxy-client",
    }


async def test_connectors_with_different_identities_never_share_a_connection(
    start_proxy: StartProxy,
    serve: Serve,
    client: aiohttp.ClientSession,
    ca: trustme.CA,
    ca_file: str,
    tmp_path: Path,
) -> None:
    upstream = await serve(peer_subject, server_context(ca.issue_cert("127.0.0.1"), client_ca=ca))
    connectors = {}
    for name in ("alpha", "beta"):
        leaf = ca.issue_cert(name, common_name=name)
        tls = {
            "ca_file": ca_file,
            "cert_pem": b"".join(b.bytes() for b in leaf.cert_chain_pems).decode(),
            "key_pem": leaf.private_key_pem.bytes().decode(),
        }
        connectors[name] = connector(upstream.url, route=f"/{name}", tls=tls)
    proxy = await start_proxy({"connectors": connectors})
    for name in ("alpha", "beta", "alpha", "beta"):  # keep-alive pools stay per identity
        assert await get(client, f"{proxy.url}/{name}/x") == (200, {"client": name})

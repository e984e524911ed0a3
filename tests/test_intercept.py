"""TLS interception (``tls_intercept``): ``CONNECT host:443`` for a connector's host is
terminated with a leaf certificate from the local CA (``tokenproxy ca init``), and the
requests inside get the credential like any other. Real clients: curl with ``-x`` and
``--cacert``, Python's urllib with ``HTTPS_PROXY``. A client that does not trust the CA fails
its handshake and the upstream sees nothing; leaves are reused per host; no key of theirs,
nor the CA's in the clear, is on disk."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import STATIC_TOKEN, RunningProxy, StartProxy, WriteConfig, connector
from tests.fakes import RecordingUpstream
from tests.test_cli import tokenproxy


@pytest.fixture
async def intercepting(
    start_proxy: StartProxy, write_config: WriteConfig, upstream: RecordingUpstream, tmp_path: Path
) -> tuple[RunningProxy, Path]:
    config: dict[str, Any] = {"connectors": {"api": connector(upstream.url, hosts=["api.test"])}}
    path = write_config(config)
    made = await asyncio.to_thread(tokenproxy, "ca", "init", "-c", str(path))
    assert made.returncode == 0, made.stderr
    state = tmp_path / ".tokenproxy"
    again = await asyncio.to_thread(tokenproxy, "ca", "init", "-c", str(path))
    assert again.returncode == 1 and "not overwritten" in again.stderr
    printed = await asyncio.to_thread(tokenproxy, "ca", "cert", "-c", str(path))
    assert printed.stdout == (state / "ca.pem").read_text()
    config["tls_intercept"] = {
        "ca_cert_file": str(state / "ca.pem"),
        "ca_key_file": str(state / "ca.key"),
    }
    return await start_proxy(config), state / "ca.pem"


def curl(proxy: RunningProxy, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-s", "--noproxy", "", "-x", proxy.url, *args, "https://api.test/orders?id=1"],
        capture_output=True, text=True, timeout=20,
        env={k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")},
    )  # fmt: skip


async def test_curl_through_the_intercepting_tunnel(
    intercepting: tuple[RunningProxy, Path], upstream: RecordingUpstream
) -> None:
    proxy, ca = intercepting
    result = await asyncio.to_thread(curl, proxy, "--cacert", str(ca))
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout)["path"] == "/orders"
    assert upstream.header_values("Authorization") == [f"Bearer {STATIC_TOKEN}"]
    distrust = await asyncio.to_thread(curl, proxy)  # the system's CAs only
    assert distrust.returncode == 60  # curl: the peer's certificate cannot be verified
    assert len(upstream.requests) == 1  # nothing went on for the client that refused


async def test_python_urllib_with_https_proxy(
    intercepting: tuple[RunningProxy, Path], upstream: RecordingUpstream
) -> None:
    proxy, ca = intercepting

    def fetch() -> tuple[int, bytes]:
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({"https": proxy.url}),
            urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=str(ca))),
        )
        with opener.open("https://api.test/items", timeout=10) as response:
            return response.status, response.read()

    status, body = await asyncio.to_thread(fetch)
    assert status == 200 and orjson.loads(body)["path"] == "/items"


async def test_leaves_are_reused_and_no_key_is_on_disk(
    intercepting: tuple[RunningProxy, Path], tmp_path: Path
) -> None:
    proxy, ca = intercepting
    context = ssl.create_default_context(cafile=str(ca))
    serials = []
    for _ in range(2):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\n")
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        await writer.start_tls(context, server_hostname="api.test")
        peer = writer.get_extra_info("ssl_object")
        serials.append(peer.getpeercert()["serialNumber"])
        assert peer.selected_alpn_protocol() in (None, "http/1.1")
        assert peer.version() in ("TLSv1.2", "TLSv1.3")
        writer.close()
    assert serials[0] == serials[1]
    files = await asyncio.to_thread(lambda: [p for p in tmp_path.rglob("*") if p.is_file()])
    for path in files:
        assert b"PRIVATE KEY" not in path.read_bytes(), path  # ca.key is sealed


@pytest.mark.parametrize("agent", ["proxy", "env"])
async def test_node_undici_reaches_an_https_url_through_the_local_ca(
    intercepting: tuple[RunningProxy, Path], upstream: RecordingUpstream, agent: str
) -> None:
    from tests.test_tunnel import undici_fetch

    proxy, ca = intercepting
    status, body = await undici_fetch(agent, proxy.url, "https://api.test/secure", str(ca))
    assert status == "200" and orjson.loads(body)["path"] == "/secure"
    assert upstream.header_values("Authorization") == [f"Bearer {STATIC_TOKEN}"]


async def test_wget_and_aiohttp_through_the_intercepting_tunnel(
    intercepting: tuple[RunningProxy, Path], upstream: RecordingUpstream
) -> None:
    import aiohttp

    proxy, ca = intercepting
    environ = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    wget = await asyncio.to_thread(
        subprocess.run,
        ["wget", "-qO-", f"--ca-certificate={ca}", "https://api.test/by-wget"],
        capture_output=True, text=True, timeout=20,
        env={**environ, "https_proxy": proxy.url},
    )  # fmt: skip
    assert wget.returncode == 0, wget.stderr
    assert orjson.loads(wget.stdout)["path"] == "/by-wget"
    context = ssl.create_default_context(cafile=str(ca))
    async with (
        aiohttp.ClientSession(trust_env=False) as session,
        session.get("https://api.test/by-aiohttp", proxy=proxy.url, ssl=context) as response,
    ):
        assert response.status == 200
        assert (await response.json())["path"] == "/by-aiohttp"
    assert upstream.header_values("Authorization", -1) == [f"Bearer {STATIC_TOKEN}"]


@pytest.mark.parametrize("library", ["requests", "httpx"])
async def test_requests_and_httpx_with_https_proxy(
    intercepting: tuple[RunningProxy, Path], upstream: RecordingUpstream, library: str
) -> None:
    """As their users configure them: the proxy and the CA bundle from the environment."""
    proxy, ca = intercepting
    environ = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    environ |= {"HTTPS_PROXY": proxy.url, "REQUESTS_CA_BUNDLE": str(ca), "SSL_CERT_FILE": str(ca)}
    script = {
        "requests": "import requests; r = requests.get('https://api.test/lib'); print(r.text)",
        "httpx": "import httpx; r = httpx.get('https://api.test/lib'); print(r.text)",
    }[library]
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", script], capture_output=True, text=True,
        timeout=30, env=environ,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout)["path"] == "/lib"
    assert upstream.header_values("Authorization") == [f"Bearer {STATIC_TOKEN}"]


JAVA_CLIENT = """
import java.io.FileInputStream;
import java.net.InetSocketAddress;
import java.net.ProxySelector;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.security.KeyStore;
import java.security.cert.CertificateFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;

public class Fetch {
    public static void main(String[] args) throws Exception {
        KeyStore trust = KeyStore.getInstance(KeyStore.getDefaultType());
        trust.load(null, null);
        trust.setCertificateEntry("tokenproxy", CertificateFactory.getInstance("X.509")
            .generateCertificate(new FileInputStream(args[1])));
        TrustManagerFactory factory =
            TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        factory.init(trust);
        SSLContext context = SSLContext.getInstance("TLS");
        context.init(null, factory.getTrustManagers(), null);
        HttpClient client = HttpClient.newBuilder()
            .proxy(ProxySelector.of(new InetSocketAddress("127.0.0.1", Integer.parseInt(args[0]))))
            .sslContext(context).version(HttpClient.Version.HTTP_1_1).build();
        HttpResponse<String> response = client.send(
            HttpRequest.newBuilder(URI.create(args[2])).build(),
            HttpResponse.BodyHandlers.ofString());
        System.out.println(response.statusCode() + " " + response.body());
    }
}
"""


async def test_java_httpclient_with_a_proxy_and_the_local_ca(
    intercepting: tuple[RunningProxy, Path], upstream: RecordingUpstream, tmp_path: Path
) -> None:
    if shutil.which("java") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run the Java client test: no java")
        pytest.skip("no Java runtime")
    proxy, ca = intercepting
    source = tmp_path / "Fetch.java"
    source.write_text(JAVA_CLIENT)
    command = ["java", str(source), str(proxy.port), str(ca), "https://api.test/from-java"]
    result = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    status, _, body = result.stdout.partition(" ")
    assert status == "200" and orjson.loads(body)["path"] == "/from-java"
    assert upstream.header_values("Authorization") == [f"Bearer {STATIC_TOKEN}"]

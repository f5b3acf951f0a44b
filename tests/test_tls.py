"""TLS on every port: real servers, a CA and a certificate made here, clients that verify.

The certificate is issued by a throwaway CA for ``127.0.0.1`` and ``localhost``;
every client (httpx, urllib, curl) is given the CA and nothing else, so a request
that succeeds proves the server presented the right chain. Both front ends of
the inference port are covered (``lean_http`` true and false); the management
and metrics ports are Hypercorn's.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
import signal
import ssl
import sys
import urllib.request
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import attrs
import httpx
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from supervisor import ModelConfig, ServerConfig
from supervisor.config import ConfigError, load_config
from supervisor.http.tls import server_context
from supervisor.models.tsconfig import ignored_keys, server_settings
from supervisor.server import BaseURLs, serve
from tests.helpers import ECHO_HANDLER, eventually
from tests.serveproc import LISTENING, ServeProcess

HTTPS = "https://127.0.0.1:0"


# --- a CA and a server certificate --------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A CA, a server certificate it issued and that certificate's key (mode 0600)."""

    ca: Path
    certificate: Path
    key: Path
    other_key: Path  # a key of no certificate here
    encrypted_key: Path  # the server's key under a passphrase

    def client(self) -> ssl.SSLContext:
        """A client context that trusts the CA alone."""
        return ssl.create_default_context(cafile=str(self.ca))


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _builder(
    subject: str, issuer: str, public: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )


def _pem_key(key: ec.EllipticCurvePrivateKey, passphrase: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def make_pki(directory: Path) -> Pki:
    """Write a CA and a server certificate for 127.0.0.1 and localhost into ``directory``."""
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        _builder("trio-supervisor test CA", "trio-supervisor test CA", ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    leaf = (
        _builder("localhost", "trio-supervisor test CA", key.public_key())
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(*(directory / n for n in ("ca.pem", "cert.pem", "key.pem", "other.pem", "enc.pem")))
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.certificate.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    other = ec.generate_private_key(ec.SECP256R1())
    for path, data in (
        (pki.key, _pem_key(key)),
        (pki.other_key, _pem_key(other)),
        (pki.encrypted_key, _pem_key(key, b"secret")),
    ):
        path.write_bytes(data)
        path.chmod(0o600)
    return pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_config(pki: Pki, **settings: object) -> ServerConfig:
    return ServerConfig(
        certificate_file=str(pki.certificate), private_key_file=str(pki.key), **settings
    )


# --- the context and its checks (no server) -------------------------------------------


def test_the_context_is_tls_1_2_or_newer_and_http_1_1(pki):
    context = server_context(tls_config(pki, inference_address=HTTPS))
    assert context is not None
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION


def test_no_https_address_means_no_context(pki, caplog):
    assert server_context(tls_config(pki)) is None
    assert "no address is https://" in caplog.text  # the files alone do not turn TLS on


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660], ids=lambda m: f"{m:04o}")
def test_a_key_others_may_read_is_refused_with_the_fix(pki, tmp_path, mode):
    key = tmp_path / "key.pem"
    key.write_bytes(pki.key.read_bytes())
    key.chmod(mode)
    config = attrs.evolve(tls_config(pki, inference_address=HTTPS), private_key_file=str(key))
    with pytest.raises(ConfigError, match=f"chmod 600 {key}") as caught:
        server_context(config)
    assert f"mode {mode:04o}" in str(caught.value)


@pytest.mark.parametrize(
    ("which", "message"),
    [
        ("other_key", "is not the key of certificate_file"),
        ("encrypted_key", "is encrypted with a passphrase"),
        ("missing_key", "private_key_file .*missing.pem: No such file"),
        ("missing_certificate", "certificate_file .*missing.pem: No such file"),
        ("key_as_certificate", "must be a PEM certificate"),
    ],
)
def test_an_unusable_certificate_or_key_is_refused_saying_why(pki, tmp_path, which, message):
    certificate, key = str(pki.certificate), str(pki.key)
    if which in ("other_key", "encrypted_key"):
        key = str(getattr(pki, which))
    elif which == "missing_key":
        key = str(tmp_path / "missing.pem")
    elif which == "missing_certificate":
        certificate = str(tmp_path / "missing.pem")
    else:
        certificate = key
    config = ServerConfig(
        inference_address=HTTPS, certificate_file=certificate, private_key_file=key
    )
    with pytest.raises(ConfigError, match=message):
        server_context(config)


def test_an_https_address_needs_the_certificate_and_key():
    with pytest.raises(ConfigError, match="https: set certificate_file and private_key_file"):
        load_config(server={"metrics_address": "https://127.0.0.1:8443"})
    with pytest.raises(ConfigError, match="expected HOST:PORT, http://HOST:PORT"):
        load_config(server={"inference_address": "ftp://127.0.0.1:21"})


def test_torchserve_properties_map_to_the_tls_settings():
    props = {
        "inference_address": "https://127.0.0.1:8443",
        "management_address": "http://127.0.0.1:8081",
        "certificate_file": "certs/cert.pem",
        "private_key_file": "certs/key.pem",
    }
    server, _, _ = server_settings(props)
    assert server == {
        "inference_address": "https://127.0.0.1:8443",
        "management_address": "127.0.0.1:8081",
        "certificate_file": "certs/cert.pem",
        "private_key_file": "certs/key.pem",
    }
    assert ignored_keys(props) == ([], [])
    assert ignored_keys({"keystore": "ks.p12"}) == (["keystore"], [])  # logged, not used


# --- real servers ----------------------------------------------------------------------


@dataclass
class Running:
    endpoints: BaseURLs
    keys: dict[str, str]
    shutdown: trio.Event

    def headers(self, api: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[api]}"}


StartServer = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_server(nursery, handler_dir, tmp_path, pki) -> AsyncIterator[StartServer]:
    """Starts an all-https server (token auth on) and waits until its model answers."""
    running: list[Running] = []

    async def start(**settings: object) -> Running:
        model = ModelConfig(
            name="echo", handler="echo", model_dir=str(handler_dir("echo", ECHO_HANDLER))
        )
        config = tls_config(
            pki,
            inference_address=HTTPS,
            management_address=HTTPS,
            metrics_address=HTTPS,
            models=(model,),
            shutdown_grace=1.0,
            key_file=str(tmp_path / "keys.json"),
            **settings,
        )
        shutdown = trio.Event()
        endpoints = await nursery.start(
            partial(serve, config, shutdown=shutdown, handle_signals=False)
        )
        keys = json.loads((tmp_path / "keys.json").read_text())
        server = Running(endpoints, {k: v["key"] for k, v in keys.items()}, shutdown)
        running.append(server)
        await _until_ready(server, pki)
        return server

    yield start
    for server in running:
        server.shutdown.set()


async def _until_ready(server: Running, pki: Pki) -> None:
    url = f"{server.endpoints.inference}/predictions/echo"
    async with httpx.AsyncClient(verify=pki.client(), timeout=30) as client:
        with trio.fail_after(30):
            while (  # noqa: ASYNC110 - the worker starts in another process
                await client.post(url, content=b"warm", headers=server.headers("inference"))
            ).status_code != 200:
                await trio.sleep(0.05)


def _requests(server: Running) -> list[tuple[str, str, bytes | None, dict[str, str], bytes]]:
    """(method, url, body, headers, what the answer holds) on each of the three ports."""
    e = server.endpoints
    return [
        (
            "POST",
            f"{e.inference}/predictions/echo",
            b"hello",
            {**server.headers("inference"), "Content-Type": "text/plain"},  # urllib: a form else
            b"hello",
        ),
        ("GET", f"{e.inference}/ping", None, {}, b"Healthy"),
        ("GET", f"{e.management}/models", None, server.headers("management"), b"echo"),
        ("GET", f"{e.metrics}/metrics", None, {}, b"ts_inference_requests_total"),
    ]


def _urllib(context: ssl.SSLContext, method: str, url: str, body, headers) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    with urllib.request.urlopen(request, context=context, timeout=30) as answer:
        return answer.status, answer.read()


@pytest.mark.slow
@pytest.mark.parametrize("lean", [True, False], ids=["lean", "hypercorn"])
async def test_every_port_answers_httpx_and_urllib_over_verified_https(start_server, pki, lean):
    server = await start_server(lean_http=lean)
    e = server.endpoints
    assert all(
        url.startswith("https://127.0.0.1:") for url in (e.inference, e.management, e.metrics)
    )
    async with httpx.AsyncClient(verify=pki.client(), timeout=30) as client:
        for method, url, body, headers, expected in _requests(server):
            answer = await client.request(method, url, content=body, headers=headers)
            assert answer.status_code == 200, (url, answer.text)
            assert expected in answer.content
    for method, url, body, headers, expected in _requests(server):
        call = partial(_urllib, pki.client(), method, url, body, headers)
        status, data = await trio.to_thread.run_sync(call)
        assert (status, expected in data) == (200, True), url


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("curl") is None, reason="curl is not installed (apt-get install curl)"
)
async def test_curl_verifies_every_port(start_server, pki):
    server = await start_server()
    for method, url, body, headers, expected in _requests(server):
        command = ["curl", "-sS", "--fail", "--cacert", str(pki.ca), "-X", method, url]
        for name, value in headers.items():
            command += ["-H", f"{name}: {value}"]
        if body is not None:
            command += ["--data-binary", body.decode()]
        done = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False
        )
        assert done.returncode == 0, (url, done.stderr)
        assert expected in done.stdout
    # without the CA, curl refuses the certificate: the server's chain is what is verified
    plain = ["curl", "-sS", f"{server.endpoints.inference}/ping"]
    done = await trio.run_process(plain, capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 60  # "Peer certificate cannot be authenticated"


def _old_client(pki: Pki) -> ssl.SSLContext:
    """A client that offers TLS 1.0 and 1.1 only."""
    context = pki.client()
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer what it may not by default
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # deprecated: that is the point
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    return context


async def _handshake(url: str, context: ssl.SSLContext) -> trio.SSLStream[trio.SocketStream]:
    host, port = url.removeprefix("https://").rsplit(":", 1)
    tcp = await trio.open_tcp_stream(host, int(port))
    stream = trio.SSLStream(tcp, context, server_hostname=host)
    try:
        with trio.fail_after(10):
            await stream.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(tcp)
        raise
    return stream


@pytest.mark.slow
@pytest.mark.parametrize("lean", [True, False], ids=["lean", "hypercorn"])
async def test_tls_1_1_is_refused_and_1_2_accepted(start_server, pki, lean):
    server = await start_server(lean_http=lean)
    for url in (server.endpoints.inference, server.endpoints.management):
        with pytest.raises(trio.BrokenResourceError) as caught:
            await _handshake(url, _old_client(pki))
        cause = caught.value.__cause__
        assert isinstance(cause, ssl.SSLError)
        if cause.reason == "NO_PROTOCOLS_AVAILABLE":
            pytest.skip("this machine's OpenSSL cannot offer TLS 1.1 even as a client")
        # the server ends the handshake: with an alert, or (trio sends none) by closing
        assert cause.reason in ("TLSV1_ALERT_PROTOCOL_VERSION", "UNEXPECTED_EOF_WHILE_READING")
        only_1_2 = pki.client()
        only_1_2.maximum_version = ssl.TLSVersion.TLSv1_2
        stream = await _handshake(url, only_1_2)
        assert stream.version() == "TLSv1.2"
        await stream.aclose()
    await _until_ready(server, pki)  # and the server serves on


async def _plain_http(url: str) -> bytes:
    """Send a plain HTTP request to an https port; everything that comes back."""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    received = b""
    with trio.fail_after(10):
        try:
            await stream.send_all(b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            while data := await stream.receive_some():
                received += data
        except trio.BrokenResourceError:  # a reset: closed, without an answer
            pass
    await stream.aclose()
    return received


@pytest.mark.slow
async def test_plain_http_to_an_https_port_is_told_or_closed_and_serving_goes_on(start_server, pki):
    server = await start_server()
    answer = await _plain_http(server.endpoints.inference)  # the lean front end
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"content-type: application/json" in head.lower()
    message = json.loads(body)["message"]
    assert message == f"this port serves https: use {server.endpoints.inference}/"
    hypercorn = await _plain_http(server.endpoints.management)
    assert not hypercorn.startswith(b"HTTP/")  # closed: Hypercorn's handshake failed
    await _until_ready(server, pki)
    async with httpx.AsyncClient(verify=pki.client(), timeout=30) as client:
        answer = await client.get(
            f"{server.endpoints.management}/models", headers=server.headers("management")
        )
        assert answer.status_code == 200


RECORDING_HANDLER = """
import time
from pathlib import Path

class Recorder:
    def initialize(self, context):
        self.log = Path(context.system_properties["model_dir"]) / "seen.txt"

    def handle(self, batch, context):
        out = []
        for item in batch:
            body = item["body"].decode()
            with self.log.open("a") as f:
                f.write(body + "\\n")
            if body.startswith("sleep "):
                time.sleep(float(body.split()[1]))
            out.append(body)
        return out
"""


@pytest.mark.slow
async def test_a_tls_client_that_leaves_cancels_its_queued_request(
    nursery, handler_dir, tmp_path, pki
):
    """A TLS close (close_notify, then FIN) is bytes on the socket: it must still count as gone."""
    model_dir = handler_dir("recorder", RECORDING_HANDLER)
    model = ModelConfig(name="rec", handler="recorder", model_dir=str(model_dir))
    config = tls_config(
        pki,
        inference_address=HTTPS,
        management_address="127.0.0.1:0",
        metrics_address="127.0.0.1:0",
        models=(model,),
        disable_token_authorization=True,
        shutdown_grace=1.0,
    )
    shutdown = trio.Event()
    endpoints = await nursery.start(partial(serve, config, shutdown=shutdown, handle_signals=False))
    log = model_dir / "seen.txt"
    url = f"{endpoints.inference}/predictions/rec"
    async with httpx.AsyncClient(verify=pki.client(), timeout=30) as client:
        with trio.fail_after(30):
            while (await client.post(url, content=b"warm")).status_code != 200:  # noqa: ASYNC110
                await trio.sleep(0.05)
        async with trio.open_nursery() as requests:
            requests.start_soon(partial(client.post, url, content=b"sleep 1"))
            await eventually(lambda: "sleep" in log.read_text())
            stream = await _handshake(endpoints.inference, pki.client())
            await stream.send_all(
                b"POST /predictions/rec HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nabandoned"
            )
            await _until_queued(client, endpoints)
            await stream.aclose()  # close_notify, then the socket closes
        assert (await client.post(url, content=b"after")).status_code == 200
    assert "abandoned" not in log.read_text().split()
    shutdown.set()


async def _until_queued(client: httpx.AsyncClient, endpoints: BaseURLs) -> None:
    with trio.fail_after(10):
        while True:
            [desc] = (await client.get(f"{endpoints.management}/models/rec")).json()
            if int(desc["jobQueueStatus"]["pendingRequests"]) == 1:
                return
            await trio.sleep(0.02)


# --- the command line --------------------------------------------------------------------


def _toml(path: Path, pki: Pki, key: Path) -> Path:
    path.write_text(
        "[server]\n"
        f'inference_address = "{HTTPS}"\n'
        f'management_address = "{HTTPS}"\n'
        'metrics_address = "127.0.0.1:0"\n'
        f'certificate_file = "{pki.certificate}"\n'
        f'private_key_file = "{key}"\n'
    )
    return path


@pytest.mark.slow
async def test_serve_refuses_to_start_with_a_key_others_may_read(pki, tmp_path):
    key = tmp_path / "key.pem"
    key.write_bytes(pki.key.read_bytes())
    key.chmod(0o644)
    command = [
        sys.executable,
        "-m",
        "supervisor",
        "serve",
        "--config",
        str(_toml(tmp_path / "tls.toml", pki, key)),
    ]
    with trio.fail_after(60):
        done = await trio.run_process(
            command, cwd=tmp_path, capture_stdout=True, capture_stderr=True, check=False
        )
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr
    assert f"error: private_key_file {key} may be read by group or others (mode 0644)" in stderr
    assert f"chmod 600 {key}" in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "key_file.json").exists()  # nothing started


@pytest.mark.slow
async def test_serve_announces_https_in_its_log_ready_file_and_try_line(
    nursery, pki, handler_dir, tmp_path
):
    model_dir = handler_dir("echo", ECHO_HANDLER)
    ready = tmp_path / "ready.json"
    server = ServeProcess(
        tmp_path,
        "--config",
        str(_toml(tmp_path / "tls.toml", pki, pki.key)),
        "--models",
        f"echo=echo@{model_dir}",
        "--ready-file",
        str(ready),
    )
    await nursery.start(server.run)
    await eventually(ready.exists, within=60)
    report = json.loads(ready.read_text())
    listening = server.find(LISTENING)
    assert listening is not None
    inference, management, metrics = listening.groups()
    assert (report["inference"], report["management"]) == (inference, management)
    assert inference.startswith("https://")
    assert management.startswith("https://")
    assert metrics.startswith("http://")
    assert server.has(f"curl -X POST {inference}/predictions/echo")
    async with httpx.AsyncClient(verify=pki.client(), timeout=30) as client:
        answer = await client.post(
            f"{inference}/predictions/echo", content=b"hi", headers=server.headers("inference")
        )
        assert answer.json()["echo"] == "hi"
    assert server.process is not None
    server.process.send_signal(signal.SIGINT)
    with trio.fail_after(20):
        assert await server.process.wait() == 0

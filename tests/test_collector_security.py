"""Collector security: API keys (and their revocation), loopback-only without keys, rate limits, TLS."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from anomalydesk.ingest.collector import CollectorSettings, SettingsError, load_keys
from anomalydesk.ingest.collector_server import BackgroundCollector
from anomalydesk.ingest.http_auth import ApiKeys, KeyFileError, RateLimiter
from test_collector import events_total, metric, post, request

KEY_A = "key-aaaaaaaaaaaaaaaaaaaa"
KEY_B = "key-bbbbbbbbbbbbbbbbbbbb"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_keys_are_required_for_ingest_and_metrics(redis_url: str, r: redis.Redis) -> None:
    with BackgroundCollector(CollectorSettings(port=0, api_keys=[KEY_A]), redis_url) as c:
        status, headers, _ = post(c.url, "/metrics", metric())
        assert status == 401 and headers["www-authenticate"].startswith("Bearer")
        assert post(c.url, "/metrics", metric(), bearer(KEY_B))[0] == 401
        assert post(c.url, "/metrics", metric(), bearer(KEY_A[:-1]))[0] == 401
        assert post(c.url, "/metrics", metric(), bearer(KEY_A))[0] == 202
        assert post(c.url, "/metrics", metric(), {"X-API-Key": KEY_A})[0] == 202
        assert request(c.url, "GET", "/prometheus")[0] == 401
        assert request(c.url, "GET", "/prometheus", headers=bearer(KEY_A))[0] == 200
        assert request(c.url, "GET", "/health")[0] == 200  # load balancers probe without keys
    assert events_total(r) == 2


def test_keys_file_reload_revokes_a_key(redis_url: str, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# collector keys\n{KEY_A}\n\n{KEY_B}\n")
    settings = CollectorSettings(port=0, api_keys_file=str(keys_file), keys_reload_seconds=0.05)
    with BackgroundCollector(settings, redis_url) as c:
        assert post(c.url, "/metrics", metric(), bearer(KEY_A))[0] == 202
        assert post(c.url, "/metrics", metric(), bearer(KEY_B))[0] == 202
        keys_file.write_text(f"{KEY_B}\n")  # revoke A
        deadline = time.monotonic() + 20
        while post(c.url, "/metrics", metric(), bearer(KEY_A))[0] != 401:
            assert time.monotonic() < deadline, "the revoked key was still accepted"
            time.sleep(0.05)
        assert post(c.url, "/metrics", metric(), bearer(KEY_B))[0] == 202
        keys_file.unlink()  # a missing file fails closed
        while post(c.url, "/metrics", metric(), bearer(KEY_B))[0] != 401:
            assert time.monotonic() < deadline, "keys of a deleted file were still accepted"
            time.sleep(0.05)


def test_api_keys_unit(tmp_path: Path) -> None:
    keys = ApiKeys([KEY_A])
    assert keys.required and keys.identify(KEY_A) is not None
    assert keys.identify(KEY_B) is None and keys.identify(None) is None
    assert keys.identify(KEY_A) != ApiKeys([KEY_B]).identify(KEY_B)
    assert not ApiKeys().required
    with pytest.raises(KeyFileError, match="at least 16"):
        ApiKeys(["short"])
    bad = tmp_path / "bad"
    bad.write_text("tiny\n")
    with pytest.raises(KeyFileError, match=r"bad:1: an API key needs at least 16"):
        ApiKeys(keys_file=bad)
    with pytest.raises(KeyFileError, match="cannot read"):
        ApiKeys(keys_file=tmp_path / "missing")


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.org"])
def test_beyond_loopback_needs_keys(host: str) -> None:
    with pytest.raises(SettingsError, match="refusing to listen"):
        load_keys(CollectorSettings(host=host))
    assert load_keys(CollectorSettings(host=host, api_keys=[KEY_A])).required


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_may_run_without_keys(host: str) -> None:
    assert not load_keys(CollectorSettings(host=host)).required


def test_cli_refuses_to_listen_openly(redis_url: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "anomalydesk.cli", "collect", "--host", "0.0.0.0", "--port", "0",
         "--redis", redis_url], capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "refusing to listen on 0.0.0.0 without API keys" in proc.stderr


def test_rate_limit_answers_429_with_retry_after(redis_url: str, r: redis.Redis) -> None:
    settings = CollectorSettings(port=0, api_keys=[KEY_A, KEY_B], rate_limit=0.01, rate_burst=2)
    with BackgroundCollector(settings, redis_url) as c:
        assert [post(c.url, "/metrics", metric(), bearer(KEY_A))[0] for _ in range(2)] == [202, 202]
        status, headers, body = post(c.url, "/metrics", metric(), bearer(KEY_A))
        assert status == 429 and int(headers["retry-after"]) >= 1 and "rate limit" in body["error"]
        assert post(c.url, "/metrics", metric(), bearer(KEY_B))[0] == 202  # per key
    assert events_total(r) == 3


def test_token_bucket_refills() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=10, burst=2, clock=lambda: now[0])
    assert limiter.acquire("k") == 0 and limiter.acquire("k") == 0
    assert limiter.acquire("k") == pytest.approx(0.1)
    now[0] += 0.1
    assert limiter.acquire("k") == 0
    assert RateLimiter(rate=0, burst=1).acquire("k") == 0  # 0 disables


# --- TLS -------------------------------------------------------------------------------------------
def make_self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1/localhost and its key, made here with `cryptography`."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "anomalydesk-test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return cert_path, key_path


def test_tls_from_the_command_line(redis_url: str, tmp_path: Path, r: redis.Redis) -> None:
    cert, key = make_self_signed(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "anomalydesk.cli", "collect", "--port", "0", "--redis", redis_url,
         "--tls-cert", str(cert), "--tls-key", str(key), "--api-key", KEY_A, "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        head = "".join(proc.stdout.readline() for _ in range(3))  # type: ignore[union-attr]
        url = json.loads(head)["listening"]
        assert url.startswith("https://127.0.0.1:")
        port = int(url.rsplit(":", 1)[1])
        context = ssl.create_default_context(cafile=str(cert))
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
        conn.request("POST", "/metrics", body=json.dumps(metric()), headers=bearer(KEY_A))
        response = conn.getresponse()
        assert response.status == 202 and json.loads(response.read())["accepted"] == 1
        conn.close()
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            plain.request("POST", "/metrics", body=json.dumps(metric()), headers=bearer(KEY_A))
            plain.getresponse()
        plain.close()
    finally:
        proc.terminate()
        proc.communicate(timeout=30)  # waits and closes the pipes
    assert proc.returncode == 0
    assert events_total(r) == 1


def test_tls_needs_both_files(tmp_path: Path) -> None:
    from anomalydesk.ingest.collector import tls_context

    with pytest.raises(SettingsError, match="go together"):
        tls_context(CollectorSettings(tls_cert=str(tmp_path / "cert.pem")))
    (tmp_path / "cert.pem").write_text("not a certificate")
    (tmp_path / "key.pem").write_text("not a key")
    with pytest.raises(SettingsError, match="cannot load"):
        tls_context(CollectorSettings(tls_cert=str(tmp_path / "cert.pem"), tls_key=str(tmp_path / "key.pem")))


def test_collect_help_smoke() -> None:
    proc = subprocess.run([sys.executable, "-m", "anomalydesk.cli", "collect", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for flag in ("--host", "--port", "--api-key", "--api-keys-file", "--tls-cert", "--tls-key", "--rate-limit"):
        assert flag in proc.stdout


def test_cli_rejects_bad_flags(redis_url: str, tmp_path: Path) -> None:
    cert, _ = make_self_signed(tmp_path)
    for extra, words in ((["--api-key", "short"], "at least 16 characters"),
                         (["--tls-cert", str(cert)], "go together"),
                         (["--port", "70000"], "between 0 and 65535")):
        proc = subprocess.run([sys.executable, "-m", "anomalydesk.cli", "collect", "--port", "0",
                               "--redis", redis_url, *extra], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and words in proc.stderr, (extra, proc.stderr)

"""Who may use the HTTP side of a real pacsd: http.rules, basic and bearer credentials, HTTPS
with the DICOM TLS certificate, and CORS for a browser viewer served elsewhere.

A real pacsd on loopback; requests through urllib. The guarded route here is /associations
(permission `admin`); the health and metrics routes stay open to monitoring.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from pacsd.policy.identity import hash_password
from tests.harness import PacsdProcess, base_config
from tests.tls_certs import make_pki

ServerFactory = Callable[..., PacsdProcess]
HTTP_TIMEOUT_S = 10
JWT_SECRET = "a-test-secret-of-at-least-32-bytes-long"  # noqa: S105 - the tests' own HMAC key
PASSWORD = "correct horse"  # noqa: S105 - a test user's password
USERS = [
    {"username": "admin", "password_hash": hash_password(PASSWORD)},
    {"username": "viewer", "password_hash": hash_password(PASSWORD)},
]
RULES = [
    {"name": "admins", "users": ["admin"], "allow": ["read", "admin", "delete"]},
    {"name": "viewers", "users": ["viewer"], "allow": ["read"]},
]


def call(
    url: str,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    context: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], Any]:
    """(status, headers by lower-case name, JSON body or None) of one request, error statuses
    included."""
    request = urllib.request.Request(url, headers=headers or {}, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S, context=context) as answer:  # noqa: S310
            status, raw_headers, body = answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as exc:
        status, raw_headers, body = exc.code, exc.headers, exc.read()
    answer_headers = {name.lower(): value for name, value in raw_headers.items()}
    document = json.loads(body) if body[:1] in (b"{", b"[") else None
    return status, answer_headers, document


def basic(username: str, password: str) -> dict[str, str]:
    """An Authorization header for HTTP basic authentication."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}


def bearer(subject: str, expires_in_s: float = 300) -> dict[str, str]:
    """An Authorization header with an HS256 token for `subject`."""
    expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=expires_in_s)
    token = jwt.encode({"sub": subject, "exp": expires}, JWT_SECRET, algorithm="HS256")
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., PacsdProcess]]:
    """Start pacsd servers with the given sections (and environment); stop them at the end."""
    started: list[PacsdProcess] = []

    def run(env: dict[str, str] | None = None, **overrides: Any) -> PacsdProcess:
        folder = tmp_path / f"server{len(started)}"
        server = PacsdProcess.from_config(folder, base_config(folder, **overrides), **(env or {}))
        started.append(server)
        return server.start()

    yield run
    for server in started:
        if server.process is not None and server.process.poll() is None:
            server.stop()


def test_default_rules_let_this_host_see_the_admin_views(
    start: Callable[..., PacsdProcess],
) -> None:
    """With no http.rules, a loopback client reads /associations without credentials."""
    server = start()
    status, _headers, document = call(f"{server.http_url}/associations")
    assert status == 200, document
    assert "associations" in document


def test_a_rule_on_other_addresses_refuses_this_host_but_not_the_health_checks(
    start: Callable[..., PacsdProcess],
) -> None:
    """A rule for 10.0.0.0/8 only: loopback gets 403 on /associations (no challenge: no rule
    would accept credentials), while /healthz and /metrics answer."""
    rules = [{"name": "ward", "address": "10.0.0.0/8", "allow": ["read", "admin"]}]
    server = start(http={"host": "127.0.0.1", "port": 0, "rules": rules})
    status, headers, document = call(f"{server.http_url}/associations")
    assert status == 403, document
    assert "admin" in document["error"]
    assert "www-authenticate" not in headers
    assert call(f"{server.http_url}/healthz")[0] == 200
    status, _headers, _body = call(f"{server.http_url}/metrics")
    assert status == 200
    refusals = server.events("http request refused")
    assert refusals
    assert refusals[-1]["permission"] == "admin"


def test_basic_authentication_with_the_identity_users(start: Callable[..., PacsdProcess]) -> None:
    """Users of identity.users log in with HTTP basic: none -> 401 with a Basic challenge,
    a wrong password or an unknown user -> 401, a user whose rule lacks `admin` -> 403, the
    admin -> 200 (and again at once, from the verified-credentials memory)."""
    server = start(identity={"users": USERS}, http={"host": "127.0.0.1", "port": 0, "rules": RULES})
    url = f"{server.http_url}/associations"
    status, headers, document = call(url)
    assert status == 401, document
    assert headers["www-authenticate"].startswith("Basic realm=")
    status, headers, document = call(url, basic("admin", "wrong"))
    assert status == 401
    assert "wrong password" in document["error"]
    assert call(url, basic("nobody", PASSWORD))[0] == 401
    status, _headers, document = call(url, basic("viewer", PASSWORD))
    assert status == 403, document
    for _ in range(2):
        status, _headers, document = call(url, basic("admin", PASSWORD))
        assert status == 200, document
    malformed = {"Authorization": "Basic !!!not-base64"}
    assert call(url, malformed)[0] == 401
    reasons = [line["reason"] for line in server.events("http credentials refused")]
    assert "wrong password" in reasons
    assert "unknown user" in reasons
    assert PASSWORD not in server.output()
    command = [sys.executable, "-m", "pacsd", "associations", "--url", server.http_url]
    env = {**os.environ, "PACSD_HTTP_PASSWORD": PASSWORD}
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 1
    assert "HTTP 401" in refused.stdout + refused.stderr
    logged_in = subprocess.run(
        [*command, "--user", "admin"], env=env, capture_output=True, text=True, timeout=60
    )
    assert logged_in.returncode == 0, logged_in.stdout + logged_in.stderr


def test_bearer_tokens_verified_by_the_identity_jwt_settings(
    start: Callable[..., PacsdProcess],
) -> None:
    """A bearer JWT signed with identity.jwt's secret names the user; an expired token or one
    signed with another key is 401; the challenge offers Bearer too."""
    server = start(
        env={"PACSD_TEST_JWT_SECRET": JWT_SECRET},
        identity={"jwt": {"algorithms": ["HS256"], "secret_env": "PACSD_TEST_JWT_SECRET"}},
        http={"host": "127.0.0.1", "port": 0, "rules": RULES},
    )
    url = f"{server.http_url}/associations"
    status, headers, _document = call(url)
    assert status == 401
    assert "Bearer" in headers["www-authenticate"]
    status, _headers, document = call(url, bearer("admin"))
    assert status == 200, document
    assert call(url, bearer("viewer"))[0] == 403
    status, _headers, document = call(url, bearer("admin", expires_in_s=-3600))
    assert status == 401
    assert "expired" in document["error"]
    forged = jwt.encode({"sub": "admin", "exp": 2**31}, "another-secret-" * 3, algorithm="HS256")
    assert call(url, {"Authorization": f"Bearer {forged}"})[0] == 401


def test_https_with_the_dicom_tls_certificate(
    start: Callable[..., PacsdProcess], tmp_path: Path
) -> None:
    """http.tls serves HTTPS with network.tls's certificate: a client trusting the CA gets its
    answers, a plain-HTTP request to the port gets none."""
    pki = make_pki(tmp_path / "pki")
    tls = pki.listener(enabled=False)
    server = start(network={"tls": tls}, http={"host": "127.0.0.1", "port": 0, "tls": True})
    assert server.http_url.startswith("https://127.0.0.1:")
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    status, _headers, document = call(f"{server.http_url}/associations", context=context)
    assert status == 200, document
    listed = subprocess.run(
        [sys.executable, "-m", "pacsd", "associations", "--config", str(server.config_path),
         "--url", server.http_url],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stdout + listed.stderr  # trusts network.tls.ca_file
    plain = server.http_url.replace("https://", "http://")
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        call(f"{plain}/healthz")


def test_cors_answers_only_the_configured_origins(start: Callable[..., PacsdProcess]) -> None:
    """http.cors.allow_origins: a preflight from that origin is allowed, with the methods and
    the Authorization header; another origin gets no Access-Control-Allow-Origin."""
    viewer = "https://viewer.example.org"
    server = start(http={"host": "127.0.0.1", "port": 0, "cors": {"allow_origins": [viewer]}})
    url = f"{server.http_url}/associations"
    preflight = {
        "Origin": viewer,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    status, headers, _document = call(url, preflight, method="OPTIONS")
    assert status == 200
    assert headers["access-control-allow-origin"] == viewer
    assert "authorization" in headers["access-control-allow-headers"].lower()
    status, headers, _document = call(url, {"Origin": viewer})
    assert status == 200
    assert headers["access-control-allow-origin"] == viewer
    _status, headers, _document = call(url, {"Origin": "https://elsewhere.example.org"})
    assert "access-control-allow-origin" not in headers


def test_https_without_a_certificate_is_refused_by_config_check(tmp_path: Path) -> None:
    """http.tls with no network.tls certificate: `pacsd config check` says what is missing."""
    config = tmp_path / "pacsd.yaml"
    config.write_text("http:\n  tls: true\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "pacsd", "config", "check", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "http.tls needs network.tls.certificate_file" in result.stdout + result.stderr


def test_the_access_log_leaves_out_query_strings(start: Callable[..., PacsdProcess]) -> None:
    """http.access_log logs each request, without its query string (QIDO-RS searches name
    patients) unless logging.log_patient_data is true."""
    server = start(http={"host": "127.0.0.1", "port": 0, "access_log": True})
    assert call(f"{server.http_url}/associations?PatientName=SECRETNAME")[0] == 200
    assert call(f"{server.http_url}/healthz")[0] == 200
    deadline = time.monotonic() + 10
    while "/healthz" not in server.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "GET /associations HTTP/1.1" in server.output()
    assert "SECRETNAME" not in server.output()

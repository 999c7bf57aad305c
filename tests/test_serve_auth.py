"""`fer serve` in production: API keys (flag, FER_API_KEY, key file), the refusal to bind
beyond loopback without one, the cap on requests in flight, and https.

Fast checks call the key gathering, validate() and the Guard middleware directly (the app
with a stub recognizer: no model); the rest run a real uvicorn process on a free loopback
port: one with three keys and --max-concurrent 1, one with a self-signed certificate.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path
from unittest import mock

import pytest
from fastapi.testclient import TestClient
from serving import LiveServer, sample
from typer.testing import CliRunner

from fercli.cli import app as cli_app
from fercli.errors import FerError
from fercli.serve.app import create_app
from fercli.serve.auth import ENV_VAR, Guard, gather_api_keys, is_loopback
from fercli.serve.config import ServeConfig, validate

KEY_FLAG = "flag-key-0123456789abcdef"
KEY_ENV = ("env-key-one-0123456789", "env-key-two-0123456789")
KEY_FILE = "file-key-0123456789abcdef"
WRONG = "wrong-key-0123456789abcdef"
KEYS = (KEY_FLAG, *KEY_ENV, KEY_FILE)


# --------------------------------------------------------------------------- keys and config


def test_keys_are_gathered_from_flags_env_and_file_each_once(tmp_path: Path) -> None:
    f = tmp_path / "keys.txt"
    f.write_text(f"# the team's keys\n\n  {KEY_FILE}  \n#{WRONG}\n{KEY_FLAG}\n")
    keys = gather_api_keys([KEY_FLAG], f" {KEY_ENV[0]} ,, {KEY_ENV[1]},", f)
    assert keys == KEYS  # stripped, blank and comment lines skipped, the duplicate once
    assert gather_api_keys() == ()


@pytest.mark.parametrize("text,message", [
    (None, "cannot read it"), ("\n# only a comment\n\n", "holds no key"),
    (f"{KEY_FILE}\n\nshort\n", "line 3 is shorter than 16"), (f"{KEY_FILE}\nhas a space 0123456789\n", "line 2 holds a character"),
])
def test_a_bad_key_file_is_one_line_naming_it_and_never_the_key(tmp_path: Path, text: str | None, message: str) -> None:
    f = tmp_path / "keys.txt"
    if text is not None:
        f.write_text(text)
    with pytest.raises(FerError, match=message) as err:
        gather_api_keys(key_file=f)
    assert str(f) in str(err.value) and "\n" not in str(err.value)
    assert re.search(r"\bshort\b", str(err.value)) is None and "has a space" not in str(err.value)


def test_bad_keys_from_flag_or_env_are_named_by_source_not_shown() -> None:
    with pytest.raises(FerError, match="--api-key number 2") as err:
        gather_api_keys([KEY_FLAG, "tiny-secret"])
    assert "tiny-secret" not in str(err.value)
    with pytest.raises(FerError, match=rf"{ENV_VAR} \(item 2\)") as err:
        gather_api_keys(env=f"{KEY_ENV[0]},sécret-0123456789abcdef")
    assert "cret" not in str(err.value)
    # A key never shows in the config's repr (tracebacks, debug logs).
    assert KEY_FLAG not in repr(ServeConfig(api_keys=(KEY_FLAG,)))


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"])
def test_loopback_binds_need_no_key(host: str) -> None:
    assert is_loopback(host)
    validate(ServeConfig(host=host))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.1", "example.org", ""])
def test_binding_beyond_loopback_needs_a_key_or_no_auth(host: str) -> None:
    with pytest.raises(FerError, match="--api-key, FER_API_KEY or --api-key-file, or pass --no-auth"):
        validate(ServeConfig(host=host))
    validate(ServeConfig(host=host, no_auth=True))
    validate(ServeConfig(host=host, api_keys=(KEY_FLAG,)))
    with pytest.raises(FerError, match="--no-auth with an API key"):
        validate(ServeConfig(host=host, no_auth=True, api_keys=(KEY_FLAG,)))


def test_cli_refuses_an_open_non_loopback_bind_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    runner = CliRunner()
    res = runner.invoke(cli_app, ["serve", "--host", "0.0.0.0"])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --host 0.0.0.0 lets other machines reach the API")
    assert "--no-auth" in lines[0] and "Traceback" not in res.output
    assert lines[0] in (Path(__file__).resolve().parents[1] / "docs" / "serving.md").read_text()  # as documented
    # A bad key from the environment or a missing key file: one line, exit 2, the key not in it.
    res = runner.invoke(cli_app, ["serve", "--host", "0.0.0.0"], env={ENV_VAR: "abc"})
    assert res.exit_code == 2 and res.output.strip().splitlines() == [
        f"error: the API key from {ENV_VAR} (item 1) is shorter than 16 characters "
        "(python -c 'import secrets; print(secrets.token_urlsafe(32))' makes one)"]
    res = runner.invoke(cli_app, ["serve", "--api-key-file", str(tmp_path / "none.txt")])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1 and "none.txt" in res.output


def test_config_refuses_half_a_tls_pair_a_bad_pair_and_a_negative_cap(tmp_path: Path) -> None:
    with pytest.raises(FerError, match="give both or neither"):
        validate(ServeConfig(ssl_certfile="c.pem"))
    with pytest.raises(FerError, match="give both or neither"):
        validate(ServeConfig(ssl_keyfile="k.pem"))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(FerError, match="cannot load them"):
        validate(ServeConfig(ssl_certfile=str(junk), ssl_keyfile=str(junk)))
    with pytest.raises(FerError, match="--max-concurrent"):
        validate(ServeConfig(max_concurrent=-1))
    validate(ServeConfig(max_concurrent=0))


# --------------------------------------------------------------------------- the middleware


class StubRecognizer:
    """What create_app needs of a Recognizer, without a model."""

    info = {"name": "stub"}
    classes = ("a", "b")

    def classify(self, crops):  # type: ignore[no-untyped-def]
        raise AssertionError("not called")

    def find_faces(self, data):  # type: ignore[no-untyped-def]
        return []


@pytest.fixture(scope="module")
def keyed_client():  # type: ignore[no-untyped-def]
    with TestClient(create_app(ServeConfig(api_keys=KEYS), recognizer=StubRecognizer())) as c:
        yield c


def test_open_paths_stay_open_and_everything_else_needs_a_key(keyed_client) -> None:  # type: ignore[no-untyped-def]
    for path in ("/", "/healthz", "/docs", "/openapi.json", "/static/app.js"):
        assert keyed_client.get(path).status_code == 200, path
    for method, path in (("GET", "/v1/model"), ("POST", "/v1/predict"), ("GET", "/metrics"), ("GET", "/v1/other"),
                         ("GET", "/V1/model"), ("GET", "/static"), ("GET", "/healthz/")):
        r = keyed_client.request(method, path)
        assert r.status_code == 401, (method, path, r.status_code)
        assert r.headers["www-authenticate"] == "Bearer" and list(r.json()) == ["error"]
    for key in KEYS:
        r = keyed_client.get("/v1/model", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200 and r.json()["name"] == "stub", key
    assert keyed_client.get("/healthz").json()["requests"]["401"] >= 7
    # Without keys nothing is asked for.
    with TestClient(create_app(ServeConfig(), recognizer=StubRecognizer())) as open_client:
        assert open_client.get("/v1/model").status_code == 200


async def _call(app: Guard, headers: list[tuple[bytes, bytes]], path: str = "/v1/model") -> int:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await app({"type": "http", "method": "GET", "path": path, "headers": headers}, receive, send)
    return int(sent[0]["status"])


async def _ok_app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


K = KEY_FLAG.encode()


@pytest.mark.parametrize("value,status", [
    (b"Bearer " + K, 200), (b"bearer " + K, 200), (b"BEARER " + K, 200),  # the scheme: any case (RFC 7235)
    (b"Bearer " + K + b"\r\nX: y", 401), (b"Bearer  " + K, 401), (b"Bearer " + K + b" ", 401),
    (b"Bearer\t" + K, 401), (b"Bearer" + K, 401), (K, 401), (b"Basic " + K, 401), (b"Token " + K, 401),
    (b"Bearer " + K[:-1], 401), (b"Bearer " + K + b"x", 401), (b"Bearer " + K.upper(), 401),
    (b"Bearer " + K + b"\x00", 401), (b"Bearer " + K + b"," + K, 401), (b"Bearer ", 401), (b"", 401),
])
def test_the_bearer_header_must_be_exactly_the_scheme_one_space_and_a_whole_key(value: bytes, status: int) -> None:
    guard = Guard(_ok_app, keys=(KEY_FLAG, KEY_FILE))
    assert asyncio.run(_call(guard, [(b"authorization", value)])) == status


def test_two_authorization_headers_are_refused_even_if_one_is_right() -> None:
    guard = Guard(_ok_app, keys=(KEY_FLAG,))
    good = (b"authorization", b"Bearer " + K)
    assert asyncio.run(_call(guard, [good])) == 200
    assert asyncio.run(_call(guard, [good, (b"authorization", b"Bearer nope")])) == 401
    assert asyncio.run(_call(guard, [(b"authorization", b"Bearer nope"), good])) == 401
    assert asyncio.run(_call(guard, [], path="/healthz")) == 200


# --------------------------------------------------------------------------- a real uvicorn


def _request(port: int, method: str, path: str, headers: dict[str, str] | None = None,
             body: bytes | None = None) -> tuple[int, http.client.HTTPMessage, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        is_json = resp.headers.get("content-type") == "application/json"
        return resp.status, resp.headers, json.loads(raw) if is_json else {"text": raw.decode(errors="replace")}
    finally:
        conn.close()


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A server with a key from each source, a cap of one request in flight, and the access
    log on (so that the test can show no key is ever written there)."""
    tmp = tmp_path_factory.mktemp("serve-auth")
    key_file = tmp / "keys.txt"
    key_file.write_text(f"# one key a line\n{KEY_FILE}\n")
    with mock.patch.dict(os.environ, {ENV_VAR: ",".join(KEY_ENV)}):
        srv = LiveServer(tmp, "--api-key", KEY_FLAG, "--api-key-file", str(key_file),
                         "--max-concurrent", "1", "--log-level", "info", startup_s=60)
    yield srv
    srv.stop()


def test_live_keys_401_200_and_no_key_in_the_log(keyed) -> None:  # type: ignore[no-untyped-def]
    p = keyed.port
    status, headers, body = _request(p, "GET", "/v1/model")
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer" and "Authorization: Bearer" in body["error"]
    status, headers, body = _request(p, "GET", "/v1/model", _bearer(WRONG))
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer" and list(body) == ["error"]
    for bad in (f"Bearer  {KEY_FLAG}", f"Basic {KEY_FLAG}", KEY_FLAG, f"Bearer {KEY_FLAG}x"):
        assert _request(p, "GET", "/v1/model", {"Authorization": bad})[0] == 401, bad
    assert _request(p, "GET", "/v1/model", {"Authorization": f"bearer {KEY_FLAG}"})[0] == 200
    for key in KEYS:  # the flag's, both of FER_API_KEY's and the file's
        status, _, body = _request(p, "GET", "/v1/model", _bearer(key))
        assert status == 200 and len(body["classes"]) == 7, key
    status, _, body = _request(p, "POST", "/v1/predict", {**_bearer(KEY_ENV[1]), "Content-Type": "image/jpeg"},
                               sample("two_faces.jpg"))
    assert status == 200 and len(body["faces"]) == 2
    assert _request(p, "POST", "/v1/predict", {"Content-Type": "image/jpeg"}, sample("two_faces.jpg"))[0] == 401
    assert _request(p, "GET", "/healthz")[0] == 200 and _request(p, "GET", "/")[0] == 200
    log = keyed.log_text()
    assert "4 API key(s)" in log and '"route": "/v1/model"' in log  # the access log is on
    for secret in (*KEYS, WRONG):
        assert secret not in log


def test_live_cap_one_in_flight_gives_503_with_retry_after_then_frees(keyed) -> None:  # type: ignore[no-untyped-def]
    p = keyed.port
    image = sample("astronaut.jpg")
    held = socket.create_connection(("127.0.0.1", p), timeout=30)
    try:  # a slow upload: the head and part of the body, then nothing
        held.sendall((f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY_FLAG}\r\n"
                      f"Content-Type: image/jpeg\r\nContent-Length: {len(image)}\r\n\r\n").encode() + image[:1000])
        deadline = time.monotonic() + 10
        while True:  # until the server has the held request in flight
            status, headers, body = _request(p, "POST", "/v1/predict", {**_bearer(KEY_FILE), "Content-Type": "image/jpeg"}, image)
            if status == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert status == 503 and headers["Retry-After"] == "1" and "--max-concurrent" in body["error"], (status, body)
        assert list(body) == ["error"] and "\n" not in body["error"]
        # The key is checked first (a stranger learns nothing of the load), and the cap is on predict only.
        assert _request(p, "POST", "/v1/predict", {"Content-Type": "image/jpeg"}, image)[0] == 401
        assert _request(p, "GET", "/v1/model", _bearer(KEY_FILE))[0] == 200
    finally:
        held.close()
    deadline = time.monotonic() + 10
    while True:  # the held request ends with its client; its slot is free again
        status, _, body = _request(p, "POST", "/v1/predict", {**_bearer(KEY_FILE), "Content-Type": "image/jpeg"}, image)
        if status != 503 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert status == 200 and len(body["faces"]) == 1


@pytest.fixture(scope="module")
def tls(tmp_path_factory):  # type: ignore[no-untyped-def]
    if shutil.which("openssl") is None:
        pytest.skip("no openssl on PATH to make a self-signed certificate")
    tmp = tmp_path_factory.mktemp("serve-tls")
    cert, key = tmp / "c.pem", tmp / "k.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-days", "1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    trusting = ssl.create_default_context(cafile=str(cert))

    class TlsServer(LiveServer):
        def request(self, method, path, body=None, headers=None, timeout=120.0):  # type: ignore[no-untyped-def]
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=trusting)
            try:
                conn.request(method, path, body=body, headers=headers or {})
                resp = conn.getresponse()
                return resp.status, json.loads(resp.read())
            finally:
                conn.close()

    srv = TlsServer(tmp, "--ssl-certfile", str(cert), "--ssl-keyfile", str(key), startup_s=60)
    yield srv
    srv.stop()


def test_live_https_with_a_self_signed_certificate(tls) -> None:  # type: ignore[no-untyped-def]
    status, body = tls.get("/healthz")  # over TLS, trusting only the test's certificate
    assert status == 200 and body["status"] == "ok"
    assert f"serving on https://127.0.0.1:{tls.port}/" in tls.log_text()
    with pytest.raises(ssl.SSLCertVerificationError):  # the default trust store does not know it
        http.client.HTTPSConnection("127.0.0.1", tls.port, timeout=10).request("GET", "/healthz")
    with pytest.raises((http.client.HTTPException, OSError)):  # and plain http gets no answer
        _request(tls.port, "GET", "/healthz")


def test_page_asks_for_the_key_once_keeps_it_for_the_tab_and_sends_it(keyed, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Headless Chromium on the keyed server: the page shows the key form after its first 401,
    says so when a key is refused, then with a right key describes the model and labels a
    photo; after a reload it still has the key (sessionStorage) and does not ask again."""
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if chromium is None or shutil.which("chromedriver") is None:
        pytest.skip("no chromium + chromedriver on PATH (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager look for downloads
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    driver.set_page_load_timeout(60)
    wait = WebDriverWait(driver, 30)
    try:
        driver.get(keyed.url + "/")
        form = driver.find_element(By.ID, "key-form")
        wait.until(lambda d: form.is_displayed())
        assert driver.find_element(By.ID, "key-input").get_attribute("type") == "password"
        driver.find_element(By.ID, "key-input").send_keys(WRONG)
        driver.find_element(By.ID, "key-btn").click()
        wait.until(lambda d: form.is_displayed() and "refused" in d.find_element(By.ID, "key-message").text)
        driver.find_element(By.ID, "key-input").send_keys(KEY_FILE)
        driver.find_element(By.ID, "key-btn").click()
        wait.until(lambda d: "classes:" in d.find_element(By.ID, "model").text)
        assert not form.is_displayed()
        assert driver.execute_script("return sessionStorage.getItem('fer-api-key')") == KEY_FILE
        driver.find_element(By.ID, "file").send_keys(str(Path(__file__).resolve().parents[1] / "sample_images" / "two_faces.jpg"))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#overlay .face-box")) == 2)
        driver.refresh()  # the same tab: the key is kept, nothing is asked
        wait.until(lambda d: "classes:" in d.find_element(By.ID, "model").text)
        assert not driver.find_element(By.ID, "key-form").is_displayed()
    finally:
        driver.quit()


def test_refused_requests_are_counted_in_metrics(keyed_client) -> None:  # type: ignore[no-untyped-def]
    """The ops middleware wraps the Guard, so a 401 is in /metrics like any answer."""
    from prometheus_client.parser import text_string_to_metric_families

    def refused() -> float:
        text = keyed_client.get("/metrics", headers={"Authorization": f"Bearer {KEYS[0]}"}).text
        return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
                   if s.name.endswith("_total") and s.labels.get("status") == "401")

    before = refused()
    assert keyed_client.get("/v1/model").status_code == 401
    assert refused() == before + 1


def test_unknown_paths_and_methods_answer_in_the_apis_error_shape() -> None:
    with TestClient(create_app(ServeConfig(), recognizer=StubRecognizer())) as c:
        r = c.get("/v2/nothing")
        assert r.status_code == 404 and r.json() == {"error": "no such path: /v2/nothing"}
        r = c.get("/v1/predict")
        assert r.status_code == 405 and list(r.json()) == ["error"] and "GET" in r.json()["error"]
        assert "allow" in {k.lower() for k in r.headers}
        page = c.get("/").text
        assert 'href="/docs"' in page and 'href="/static/favicon.svg"' in page
        assert c.get("/static/favicon.svg").status_code == 200

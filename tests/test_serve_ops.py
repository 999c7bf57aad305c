"""`fer serve` for operators: /metrics (Prometheus), /readyz, the JSON access log, and the
drain on SIGTERM, against the app (TestClient) and a real uvicorn process.

The real-process tests run `fer serve` through tests/serve_gated.py: the real CLI, app and
uvicorn, with the model's classify held behind gate files, so that a test knows the warm-up
pass and the requests are in flight at the moment it looks (or sends the signal).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from serving import REPO, free_port, sample
from typer.testing import CliRunner

from fercli.cli import app as cli_app
from fercli.errors import FerError
from fercli.serve.app import create_app
from fercli.serve.batching import MicroBatcher
from fercli.serve.config import ServeConfig, validate
from fercli.serve.ops import ACCESS_LOGGER

GATED = Path(__file__).resolve().parent / "serve_gated.py"


def scrape(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, its labels): value} of a /metrics answer."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(m: dict, name: str, **labels: str) -> float:
    return m.get((name, frozenset(labels.items())), 0.0)


def wait_until(check, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.05)


class FakeRecognizer:
    """classify only (all the warm-up needs); held behind `gate`, or failing."""

    classes = ("a", "b")
    info = {"name": "fake", "runner": {"backend": "none", "precision": "fp32", "detector": "none"}}

    def __init__(self, gate: threading.Event | None = None, fail: bool = False) -> None:
        self.gate, self.fail = gate, fail

    def classify(self, crops: np.ndarray) -> np.ndarray:
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.fail:
            raise RuntimeError("the graph would not run")
        return np.full((len(crops), 2), 0.5, np.float32)


# --------------------------------------------------------------------------- units


def test_batcher_hook_reports_faces_queue_waits_and_forward_time() -> None:
    gate, entered, seen = threading.Event(), threading.Event(), []

    def classify(crops: np.ndarray) -> np.ndarray:
        entered.set()
        assert gate.wait(10)
        time.sleep(0.02)
        return np.zeros((len(crops), 2), np.float32)

    b = MicroBatcher(classify, max_batch=32, max_wait_ms=0, on_batch=lambda *a: seen.append(a))
    try:
        first = b.submit(np.zeros((1, 48, 48), np.uint8))
        assert entered.wait(10)
        later = [b.submit(np.zeros((2, 48, 48), np.uint8)) for _ in range(3)]
        assert b.waiting_faces == 6  # queued behind the running pass
        time.sleep(0.05)
        gate.set()
        for f in [first, *later]:
            f.result(10)
    finally:
        b.close()
    assert b.waiting_faces == 0
    assert [(n, len(waits)) for n, waits, _ in seen] == [(1, 1), (6, 3)]
    assert all(w >= 0.05 for w in seen[1][1])  # they waited out the first pass
    assert all(fwd >= 0.02 for _, _, fwd in seen)


def test_config_and_cli_know_drain_and_access_log() -> None:
    with pytest.raises(FerError, match="--drain-s"):
        validate(ServeConfig(drain_s=-1.0))
    assert ServeConfig().drain_s == 10.0 and ServeConfig().access_log is True
    out = CliRunner().invoke(cli_app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    assert "--drain-s" in out and "--no-access-log" in out


def test_readyz_is_503_until_the_warm_up_pass_has_run_then_200() -> None:
    gate = threading.Event()
    with TestClient(create_app(ServeConfig(access_log=False), recognizer=FakeRecognizer(gate))) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and "warm-up" in r.json()["error"], r.text
        assert c.get("/healthz").status_code == 200  # alive meanwhile
        gate.set()
        wait_until(lambda: c.get("/readyz").status_code == 200, 10, "/readyz 200 after the warm-up")
        assert c.get("/readyz").json() == {"status": "ready"}
    with TestClient(create_app(ServeConfig(access_log=False), recognizer=FakeRecognizer(fail=True))) as c:
        err = wait_until(lambda: c.get("/readyz").json().get("error", "").count("failed") and c.get("/readyz"),
                         10, "/readyz names the failed warm-up")
        assert err.status_code == 503 and "the graph would not run" in err.json()["error"]


def test_draining_refuses_new_requests_with_503_retry_after_but_answers_probes() -> None:
    with TestClient(create_app(ServeConfig(access_log=False), recognizer=FakeRecognizer())) as c:
        wait_until(lambda: c.get("/readyz").status_code == 200, 10, "ready")
        c.app.state.service.ops.draining = True  # what SIGTERM sets (lifecycle.py)
        r = c.post("/v1/predict", content=sample("astronaut.jpg"), headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1", (r.status_code, r.headers)
        assert list(r.json()) == ["error"] and "\n" not in r.json()["error"]
        assert c.get("/v1/model").status_code == 503
        ready = c.get("/readyz")
        assert ready.status_code == 503 and "draining" in ready.json()["error"]
        assert c.get("/healthz").status_code == 200
        m = scrape(c.get("/metrics").text)
        assert value(m, "fer_requests_total", route="/v1/predict", status="503") == 1


# --------------------------------------------------------------------------- the app


@pytest.fixture(scope="module")
def rec():  # type: ignore[no-untyped-def]
    import fercli

    return fercli.Recognizer()


def test_metrics_move_with_requests_and_faces_per_batch(rec) -> None:  # type: ignore[no-untyped-def]
    with TestClient(create_app(ServeConfig(max_wait_ms=2, access_log=False), recognizer=rec)) as c:
        wait_until(lambda: c.get("/readyz").status_code == 200, 30, "ready")
        r = c.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        before = scrape(r.text)
        for name in ("two_faces.jpg", "two_faces.jpg", "astronaut.jpg"):
            r = c.post("/v1/predict", content=sample(name), headers={"Content-Type": "image/jpeg"})
            assert r.status_code == 200
        assert c.post("/v1/predict", content=b"not an image").status_code == 415
        after = scrape(c.get("/metrics").text)
    ok = dict(route="/v1/predict", status="200")
    assert value(before, "fer_requests_total", **ok) == 0 and value(after, "fer_requests_total", **ok) == 3
    assert value(after, "fer_requests_total", route="/v1/predict", status="415") == 1
    assert value(after, "fer_requests_total", route="/readyz", status="200") >= 1
    assert value(after, "fer_request_duration_seconds_count", route="/v1/predict") == 4
    # five faces in one forward pass per request (they came one at a time), the warm-up apart
    assert value(before, "fer_batch_faces_count") == 0 and value(before, "fer_batch_faces_sum") == 0
    assert value(after, "fer_batch_faces_count") == 3 and value(after, "fer_batch_faces_sum") == 5
    assert value(after, "fer_batch_faces_bucket", le="2.0") == 3 and value(after, "fer_batch_faces_bucket", le="1.0") == 1
    assert value(after, "fer_forward_duration_seconds_count") == 3
    assert value(after, "fer_queue_wait_seconds_count") == 3
    assert value(after, "fer_detect_duration_seconds_count") == 3 and value(after, "fer_detect_duration_seconds_sum") > 0
    assert value(after, "fer_requests_in_flight") == 1  # the scrape itself
    assert value(after, "fer_queue_faces") == 0
    info = [labels for (name, labels) in after if name == "fer_model_info"]
    assert len(info) == 1 and dict(info[0])["name"] == rec.info["name"]
    assert dict(info[0])["backend"] == rec.info["runner"]["backend"] and dict(info[0])["version"]


def test_access_log_is_one_json_line_per_request_without_body_or_authorization(rec, capsys) -> None:  # type: ignore[no-untyped-def]
    secret, data = "Bearer s3cr3t-token-xyz", sample("two_faces.jpg")
    with TestClient(create_app(ServeConfig(max_wait_ms=2), recognizer=rec)) as c:
        wait_until(lambda: c.app.state.service.ops.ready, 30, "ready")
        capsys.readouterr()
        c.post("/v1/predict?token=q-secret", content=data, headers={"Content-Type": "image/jpeg", "Authorization": secret})
        c.post("/v1/predict", content=b"plain words in the body", headers={"Content-Type": "text/plain", "Authorization": secret})
        c.get("/healthz")
        c.get("/static/no-such-file")
        err = capsys.readouterr().err
    lines = [json.loads(ln) for ln in err.splitlines() if ln.startswith("{")]
    assert [(x["method"], x["route"], x["status"], x["faces"]) for x in lines] == [
        ("POST", "/v1/predict", 200, 2), ("POST", "/v1/predict", 415, None), ("GET", "/healthz", 200, None),
        ("GET", "/static", 404, None)], err
    for x in lines:
        assert set(x) == {"time", "method", "route", "status", "ms", "faces", "client"}
        assert x["time"].endswith("Z") and x["time"][10] == "T" and x["ms"] >= 0 and x["client"]
    assert "s3cr3t" not in err and "q-secret" not in err and "plain words" not in err
    # --no-access-log: nothing
    with TestClient(create_app(ServeConfig(access_log=False), recognizer=FakeRecognizer())) as c:
        capsys.readouterr()
        c.get("/healthz")
        quiet = capsys.readouterr().err
    assert '"route"' not in quiet and ACCESS_LOGGER not in quiet, quiet


# --------------------------------------------------------------------------- a real process


class GatedServer:
    """tests/serve_gated.py on a free port: classify waits for warm.gate (the warm-up pass),
    then every later call for work.gate."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.port, self.tmp = free_port(), tmp
        self.warm, self.work = tmp / "warm.gate", tmp / "work.gate"
        self.log = tmp / "serve.log"
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, str(GATED), str(self.warm), str(self.work), "serve",
                                          "--port", str(self.port), "--log-level", "info", *args],
                                         cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)

    def request(self, method: str, path: str, body: bytes | None = None,
                timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "image/jpeg"} if body else {})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def metrics(self) -> dict:
        return scrape(self.request("GET", "/metrics")[2].decode())

    def up(self, timeout: float = 120.0) -> None:
        def alive() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"fer serve exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                return self.request("GET", "/healthz")[0] == 200
            except OSError:
                return False
        wait_until(alive, timeout, "fer serve answers /healthz")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=20)


def _post_in_thread(srv: GatedServer, data: bytes, results: list, i: int) -> threading.Thread:
    def go() -> None:
        try:
            status, headers, body = srv.request("POST", "/v1/predict", data, timeout=60)
            results[i] = (status, json.loads(body) if body.startswith(b"{") else body[:100])
        except Exception as exc:  # noqa: BLE001 - the test reads what each one got
            results[i] = exc
    t = threading.Thread(target=go)
    t.start()
    return t


def test_sigterm_drains_eight_requests_in_flight_then_exits_0(tmp_path) -> None:  # type: ignore[no-untyped-def]
    srv = GatedServer(tmp_path, "--drain-s", "10", "--max-wait-ms", "1")
    threads: list[threading.Thread] = []
    try:
        srv.up()
        status, _, body = srv.request("GET", "/readyz")
        assert status == 503 and "warm-up" in json.loads(body)["error"]  # the warm-up pass is held
        srv.warm.touch()
        wait_until(lambda: srv.request("GET", "/readyz")[0] == 200, 30, "/readyz 200 after the warm-up")

        data, results = sample("two_faces.jpg"), [None] * 8
        threads = [_post_in_thread(srv, data, results, i) for i in range(8)]
        # all 8 in flight (+ this scrape), held at the forward pass; faces queue behind it
        m = wait_until(lambda: (lambda m: value(m, "fer_requests_in_flight") == 9 and m)(srv.metrics()),
                       30, "8 requests in flight")
        assert value(m, "fer_requests_total", route="/v1/predict", status="200") == 0
        srv.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        wait_until(lambda: srv.request("GET", "/readyz")[0] == 503, 5, "/readyz 503 once draining")
        status, headers, body = srv.request("POST", "/v1/predict", data)
        assert status == 503 and headers.get("retry-after") == "1", (status, headers, body)
        assert "shutting down" in json.loads(body)["error"] and srv.proc.poll() is None
        assert value(srv.metrics(), "fer_requests_in_flight") == 9  # still there, still held

        srv.work.touch()
        for t in threads:
            t.join(timeout=60)
        assert all(isinstance(r, tuple) and r[0] == 200 and len(r[1]["faces"]) == 2 for r in results), results
        assert srv.proc.wait(timeout=10 + 10) == 0, srv.log.read_text()[-2000:]
        assert time.monotonic() - signalled < 10, "it waited for --drain-s instead of for the requests"
        with pytest.raises(ConnectionRefusedError):  # closed once drained
            srv.request("GET", "/healthz", timeout=2)
        log = srv.log.read_text()
        assert "Drained" in log and "timed out" not in log, log[-2000:]
        access = [json.loads(ln) for ln in log.splitlines() if ln.startswith('{"time"')]
        predicts = [(x["status"], x["faces"]) for x in access if x["route"] == "/v1/predict"]
        assert sorted(predicts, key=str) == sorted([(200, 2)] * 8 + [(503, None)], key=str), predicts
    finally:
        srv.work.touch()
        for t in threads:
            t.join(timeout=30)
        srv.stop()


def test_drain_gives_up_after_drain_s_and_still_exits_0(tmp_path) -> None:  # type: ignore[no-untyped-def]
    srv = GatedServer(tmp_path, "--drain-s", "1", "--no-access-log")
    threads: list[threading.Thread] = []
    try:
        srv.warm.touch()  # ready at once; the work gate stays shut: these never finish
        srv.up()
        wait_until(lambda: srv.request("GET", "/readyz")[0] == 200, 30, "ready")
        results = [None] * 2
        threads = [_post_in_thread(srv, sample("astronaut.jpg"), results, i) for i in range(2)]
        wait_until(lambda: value(srv.metrics(), "fer_requests_in_flight") == 3, 30, "2 requests in flight")
        srv.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert srv.proc.wait(timeout=15) == 0, srv.log.read_text()[-2000:]
        assert time.monotonic() - signalled < 1 + 4
        for t in threads:
            t.join(timeout=10)
        # cut short, and told so: 503, retry
        assert all(r[0] == 503 and "--drain-s" in r[1]["error"] for r in results), results
        log = srv.log.read_text()
        assert "Drain timed out after 1 s with 2 request(s)" in log and '{"time"' not in log, log[-2000:]
    finally:
        for t in threads:
            t.join(timeout=10)
        srv.stop()

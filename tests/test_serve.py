"""`fer serve`: the micro-batcher (exact units), the app through FastAPI's TestClient, and a
real uvicorn process on a loopback port: the API, and a bounded load test (32 clients, 15 s).

The HTTP bad-input matrix and the fault tests (dropped, slow, malformed uploads) are in
tests/test_bad_input_http.py; the real browser in tests/test_serve_browser.py.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serving import LiveServer, multipart, sample
from typer.testing import CliRunner

from fercli.cli import app as cli_app
from fercli.errors import FerError
from fercli.serve.app import STATIC, create_app
from fercli.serve.batching import MicroBatcher
from fercli.serve.config import ServeConfig, validate

EXPECTED_FACES = {"two_faces.jpg": 2, "astronaut.jpg": 1, "grace_hopper.jpg": 1}


# --------------------------------------------------------------------------- the batcher


def _rows(crops: np.ndarray) -> np.ndarray:
    """A stand-in classify whose row i can be traced to crop i: (N, 2) = [id, 1 - id]."""
    ids = crops[:, 0, 0].astype(np.float32) / 255
    return np.stack([ids, 1 - ids], axis=1)


def _crops(*ids: int) -> np.ndarray:
    return np.stack([np.full((48, 48), i, np.uint8) for i in ids])


class _GatedClassify:
    """Records every batch; the first call blocks until released, so others queue behind it."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        self.batches.append([int(v) for v in crops[:, 0, 0]])
        self.entered.set()
        if len(self.batches) == 1:
            assert self.gate.wait(10)
        return _rows(crops)


def test_batcher_merges_requests_that_queue_together_and_returns_each_its_rows() -> None:
    clf = _GatedClassify()
    b = MicroBatcher(clf, max_batch=32, max_wait_ms=0)
    try:
        first = b.submit(_crops(1))
        assert clf.entered.wait(10)  # the first forward pass is running; these queue behind it
        later = [b.submit(_crops(10 + i, 20 + i)) for i in range(5)]
        clf.gate.set()
        assert first.result(10)[:, 0].tolist() == pytest.approx([1 / 255])
        for i, f in enumerate(later):
            assert f.result(10)[:, 0].tolist() == pytest.approx([(10 + i) / 255, (20 + i) / 255])
    finally:
        b.close()
    assert clf.batches == [[1], [10, 20, 11, 21, 12, 22, 13, 23, 14, 24]]
    assert b.stats.as_dict() == {"batches": 2, "faces": 11, "largest": 10, "mean": 5.5}


def test_batcher_respects_max_batch_and_never_splits_one_request() -> None:
    clf = _GatedClassify()
    b = MicroBatcher(clf, max_batch=3, max_wait_ms=0)
    try:
        first = b.submit(_crops(1))
        assert clf.entered.wait(10)
        futures = [b.submit(_crops(2, 3)), b.submit(_crops(4, 5)), b.submit(_crops(6, 7, 8, 9, 10))]
        clf.gate.set()
        for f in [first, *futures]:
            f.result(10)
    finally:
        b.close()
    # [2,3] + [4,5] would be 4 > 3 faces; the 5-face request exceeds max_batch and goes alone.
    assert clf.batches == [[1], [2, 3], [4, 5], [6, 7, 8, 9, 10]]


def test_batcher_waits_up_to_max_wait_for_company() -> None:
    seen: list[int] = []
    b = MicroBatcher(lambda c: (seen.append(len(c)), _rows(c))[1], max_batch=8, max_wait_ms=400)
    try:
        b.expect()  # a second request is on its way: the first face waits for it
        f1 = b.submit(_crops(1))
        time.sleep(0.05)  # well inside the 400 ms window the first face opened
        f2 = b.submit(_crops(2))
        b.arrived()
        f1.result(10), f2.result(10)
    finally:
        b.close()
    assert seen == [2]


def test_batcher_gives_every_caller_of_a_failed_batch_the_error() -> None:
    def broken(crops: np.ndarray) -> np.ndarray:
        raise RuntimeError("model exploded")

    b = MicroBatcher(broken, max_batch=8, max_wait_ms=50)
    try:
        fs = [b.submit(_crops(i)) for i in range(3)]
        for f in fs:
            with pytest.raises(RuntimeError, match="model exploded"):
                f.result(10)
    finally:
        b.close()
    with pytest.raises(RuntimeError, match="closed"):
        b.submit(_crops(1))


# --------------------------------------------------------------------------- the config and CLI


@pytest.mark.parametrize("field,value,flag", [
    ("max_batch", 0, "--max-batch"), ("max_wait_ms", -1.0, "--max-wait-ms"),
    ("max_body_mb", 0.0, "--max-body-mb"), ("max_pixels", 10**12, "--max-pixels"),
    ("timeout_s", 0.0, "--timeout-s"), ("workers_detect", -1, "--workers-detect"),
    ("port", 70000, "--port"), ("port", 0, "--port"), ("log_level", "loud", "--log-level"),
])
def test_config_refuses_bad_values_naming_the_flag(field: str, value: object, flag: str) -> None:
    with pytest.raises(FerError, match=flag):
        validate(ServeConfig(**{field: value}))


def test_unbatched_mode_needs_max_batch_one() -> None:
    with pytest.raises(FerError, match="--max-batch 1"):
        validate(ServeConfig(workers_detect=0, max_batch=8))
    validate(ServeConfig(workers_detect=0, max_batch=1))


def test_cli_defaults_bind_loopback_and_bad_flags_fail_before_loading() -> None:
    runner = CliRunner()
    res = runner.invoke(cli_app, ["serve", "--help"])
    assert res.exit_code == 0 and "127.0.0.1" in res.output and "--max-batch" in res.output
    assert ServeConfig().host == "127.0.0.1"
    res = runner.invoke(cli_app, ["serve", "--max-batch", "0"])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == ["error: --max-batch must be ≥ 1, got 0"]


def test_page_and_its_assets_load_nothing_from_elsewhere() -> None:
    files = sorted(STATIC.iterdir())
    assert {p.name for p in files} >= {"index.html", "app.js", "style.css"}
    for p in files:
        text = p.read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")  # a name, not a load
        assert "//cdn" not in text and "https://" not in text and "http://" not in text, p.name


# --------------------------------------------------------------------------- TestClient


@pytest.fixture(scope="module")
def rec():  # type: ignore[no-untyped-def]
    import fercli

    return fercli.Recognizer()


@pytest.fixture(scope="module")
def client(rec):  # type: ignore[no-untyped-def]
    with TestClient(create_app(ServeConfig(max_wait_ms=2), recognizer=rec)) as c:
        yield c


def test_testclient_answers_as_the_python_api_and_serves_model_health_page(client, rec) -> None:  # type: ignore[no-untyped-def]
    """One test item (one model load under pytest-xdist): every sample photo, raw and
    multipart, equals Recognizer.predict; a photo without a face is an empty list; /v1/model,
    /healthz, the page with its CSP, /openapi.json."""
    import cv2

    for name in sorted(EXPECTED_FACES):
        data = sample(name)
        raw = client.post("/v1/predict", content=data, headers={"Content-Type": "image/jpeg"})
        body, ctype = multipart("file", name, data)
        form = client.post("/v1/predict", content=body, headers={"Content-Type": ctype})
        assert raw.status_code == form.status_code == 200, name
        expected = [f.to_dict() for f in rec.predict(data)]
        assert len(expected) == EXPECTED_FACES[name]
        assert raw.json() == {"path": "upload", "faces": expected, "error": None}
        assert form.json() == {"path": name, "faces": expected, "error": None}

    ok, png = cv2.imencode(".png", np.full((120, 160), 200, np.uint8))
    r = client.post("/v1/predict", content=png.tobytes(), headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and r.json() == {"path": "upload", "faces": [], "error": None}

    m = client.get("/v1/model").json()
    assert m["classes"] == list(rec.classes) and len(m["classes"]) == 7
    assert m["serving"]["max_batch"] == 32
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["requests"]["200"] == 7 and h["batches"]["faces"] == 8
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'id="camera-btn"' in page.text and 'type="file"' in page.text
    assert client.get("/static/app.js").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/model", "/healthz"} <= set(spec["paths"])
    # /docs: the schema as one page that loads nothing from elsewhere (no script, no CDN)
    docs = client.get("/docs")
    assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]
    assert "default-src 'self'" in docs.headers["content-security-policy"]
    assert "<code>/v1/predict</code>" in docs.text and "Faces and expressions in one image" in docs.text
    assert "multipart field `file`" in docs.text and "<script" not in docs.text and "https://" not in docs.text
    assert client.get("/redoc").status_code == 404

    # Lower caps from the config: pixels (read from the header) and body size give 413; the
    # one-request-at-a-time server (the benchmark's reference) answers the same JSON.
    data = sample("two_faces.jpg")  # 964x512 = 493,568 pixels, 136,881 bytes
    small = ServeConfig(max_pixels=400_000, max_body_mb=0.25, workers_detect=0, max_batch=1)
    with TestClient(create_app(small, recognizer=rec)) as c:
        r = c.post("/v1/predict", content=data, headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 413 and "964x512" in r.json()["error"], r.json()
        r = c.post("/v1/predict", content=data + b"\0" * 200_000, headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 413 and "262144 byte limit" in r.json()["error"], r.json()
        r = c.post("/v1/predict", content=sample("astronaut.jpg"), headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 200
        assert r.json()["faces"] == [f.to_dict() for f in rec.predict(sample("astronaut.jpg"))]
        assert c.get("/healthz").json()["batches"] is None  # no batcher in this mode


# --------------------------------------------------------------------------- a real uvicorn


@pytest.fixture(scope="module")
def server(tmp_path_factory):  # type: ignore[no-untyped-def]
    # A generous timeout: under the load test 32 clients queue for two cores.
    srv = LiveServer(tmp_path_factory.mktemp("serve"), "--timeout-s", "120")
    yield srv
    srv.stop()


@pytest.mark.slow
def test_live_server_api_then_load_32_clients_15_s(server) -> None:  # type: ignore[no-untyped-def]
    """A real uvicorn process (one test item: one server under pytest-xdist). The API
    answers raw and multipart posts, /v1/model and /healthz; then 32 concurrent clients post
    the sample photos for 15 s: every answer is a 200 with the right number of faces, and
    the server's RSS does not keep growing."""
    data = sample("two_faces.jpg")
    status, body = server.post(data, "image/jpeg")
    assert status == 200 and [f["label"] for f in body["faces"]] == ["happy", "neutral"]
    mp, ctype = multipart("file", "two_faces.jpg", data)
    status, form = server.post(mp, ctype)
    assert status == 200 and form["path"] == "two_faces.jpg" and form["faces"] == body["faces"]
    status, m = server.get("/v1/model")
    assert status == 200 and len(m["classes"]) == 7
    status, h = server.get("/healthz")
    assert status == 200 and h["requests"]["200"] == 2

    names = sorted(EXPECTED_FACES)
    images = {n: sample(n) for n in names}
    with ThreadPoolExecutor(32) as pool:  # warm-up: one burst, so arenas reach their size
        list(pool.map(lambda i: server.post(images[names[i % 3]], "image/jpeg"), range(32)))
    rss = [server.rss_kb()]
    before = server.get("/healthz")[1]["batches"]
    stop_at = time.monotonic() + 15.0
    problems: list[str] = []
    counts = [0] * 32
    faces_served = [0] * 32

    def client_loop(k: int) -> None:
        i = k
        while time.monotonic() < stop_at:
            name = names[i % len(names)]
            i += 1
            try:
                status, body = server.post(images[name], "image/jpeg", timeout=120)
            except Exception as exc:  # noqa: BLE001 - every failure is counted, none hidden
                problems.append(f"{name}: {type(exc).__name__}: {exc}")
                continue
            if status != 200 or len(body.get("faces", ())) != EXPECTED_FACES[name] or body["error"] is not None:
                problems.append(f"{name}: {status} {str(body)[:200]}")
            counts[k] += 1
            faces_served[k] += len(body.get("faces", ()))

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(32)]
    for t in threads:
        t.start()
    time.sleep(7.5)
    rss.append(server.rss_kb())
    for t in threads:
        t.join(timeout=300)
    rss.append(server.rss_kb())
    after = server.get("/healthz")[1]["batches"]
    assert not problems, f"{len(problems)} failed of {sum(counts)}: {problems[:5]}"
    assert all(c >= 1 for c in counts), f"a client got no answer in 15 s: {counts}"
    # Every face went through the batcher, in fewer forward passes than requests answered.
    assert after["faces"] - before["faces"] == sum(faces_served), (before, after, sum(faces_served))
    assert 0 < after["batches"] - before["batches"] < sum(counts), (before, after, sum(counts))
    # Steady: no more than 64 MB above the warmed-up size, and the second half grows less
    # than 32 MB (a leak of one decoded photo per request would add ~1.5 MB per request).
    assert rss[2] - rss[0] < 64 * 1024 and rss[2] - rss[1] < 32 * 1024, f"RSS kB start/middle/end: {rss}"


def test_api_docs_page_escapes_what_the_schema_says() -> None:
    from fercli.serve.apidocs import render_api_docs

    page = render_api_docs({"info": {"title": "t<x>", "version": "1"}, "paths": {"/a": {"get": {
        "summary": "<script>alert(1)</script>", "parameters": [{"name": "q&", "in": "query", "required": True,
                                                               "schema": {"type": "array", "items": {"type": "string"}}}],
        "responses": {"200": {"description": "ok"}}}}}})
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<code>q&amp;</code>" in page and "array of string" in page and "t&lt;x&gt; 1" in page


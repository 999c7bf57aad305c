"""The bad-input matrix over HTTP, and the fault tests, against a real `fer serve` process.

Every bad request must get a 4xx whose body is one line of JSON {"error": "..."}, and the
server must still answer /healthz and a real photo after it. Odd but valid images (a 16-bit
PNG, a CMYK JPEG) are handled exactly as `fer predict` handles them; their broken versions
are refused. Faults: a client that hangs up mid-upload, one that sends its body too slowly,
and a malformed multipart body - each rejected while other clients keep being answered.
"""

from __future__ import annotations

import io
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image
from serving import SAMPLES, LiveServer, multipart, request_head, sample

from tests.fixtures import sample_image, save_variant, write_huge_png

TIMEOUT_S = 4  # the server's --timeout-s here: the slow-client test waits this long


@pytest.fixture(scope="module")
def server(tmp_path_factory):  # type: ignore[no-untyped-def]
    srv = LiveServer(tmp_path_factory.mktemp("serve-bad"), "--timeout-s", str(TIMEOUT_S),
                     "--max-body-mb", "20")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def files(tmp_path_factory):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("bad-http")
    face = np.asarray(Image.fromarray(sample_image("astronaut.jpg")).convert("L"))  # (512, 512): one face
    out = {
        "png8": save_variant(d / "p8.png", face, "grey").read_bytes(),
        "huge": write_huge_png(d / "huge.png").read_bytes(),
        "png16": save_variant(d / "p16.png", face, "16bit").read_bytes(),
        "cmyk": save_variant(d / "cmyk.jpg", face, "cmyk").read_bytes(),
    }
    buf = io.BytesIO()
    Image.fromarray(face).save(buf, format="GIF")
    out["gif"] = buf.getvalue()
    return out


def _check_error(status: int | None, body: dict | None, expected: tuple[int, ...], needle: str) -> None:
    assert status in expected, (status, body)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    msg = body["error"]
    assert isinstance(msg, str) and msg and "\n" not in msg and "Traceback" not in msg, msg
    assert needle.lower() in msg.lower(), msg


def _still_serving(server: LiveServer) -> None:
    assert server.get("/healthz")[0] == 200


@dataclass(frozen=True)
class Case:
    name: str
    send: Callable[[LiveServer, dict], tuple[int | None, dict | None]]
    status: tuple[int, ...]
    needle: str  # a word the one-line message must contain


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _png16_without_pixels(png: bytes) -> bytes:
    """The 16-bit PNG with its IDAT data cut short (the header still says 96x96, 16-bit)."""
    i = png.index(b"IDAT")
    return png[: i + 4 + 20] + png[-12:]


def _big_declared(server: LiveServer, _: dict) -> tuple[int | None, dict | None]:
    """50 MB announced by Content-Length: refused before the body is read."""
    size = 50 << 20
    chunk = b"\0" * (1 << 20)
    return server.raw(request_head(server.port, "image/jpeg", size), [chunk] * 50)


def _big_chunked(server: LiveServer, _: dict) -> tuple[int | None, dict | None]:
    """50 MB with chunked transfer encoding (no length up front): refused once 20 MB arrived."""
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: image/png\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    part = b"%x\r\n" % (1 << 20) + b"\0" * (1 << 20) + b"\r\n"
    return server.raw(head, [part] * 50 + [b"0\r\n\r\n"])


CASES = [
    Case("empty body", lambda s, f: s.post(b"", "image/jpeg"), (400,), "empty"),
    Case("text", lambda s, f: s.post(b"hello, this is not a photo", "text/plain"), (415,), "content-type"),
    Case("text sent as octet-stream", lambda s, f: s.post(b"hello, this is not a photo"), (415,), "not an image"),
    Case("truncated JPEG", lambda s, f: s.post(_truncated(sample("two_faces.jpg")), "image/jpeg"), (422,), "truncated"),
    Case("20000x20000 PNG", lambda s, f: s.post(f["huge"], "image/png"), (413,), "too large"),
    Case("50 MB body", _big_declared, (413,), "limit"),
    Case("50 MB chunked body", _big_chunked, (413,), "limit"),
    Case("GIF", lambda s, f: s.post(f["gif"], "image/gif"), (415,), "GIF"),
    Case("16-bit PNG without its pixels", lambda s, f: s.post(_png16_without_pixels(f["png16"]), "image/png"), (422,), "decode"),
    Case("truncated CMYK JPEG", lambda s, f: s.post(_truncated(f["cmyk"]), "image/jpeg"), (422,), "truncated"),
    Case("wrong content-type", lambda s, f: s.post(sample("two_faces.jpg"), "application/json"), (415,), "content-type"),
    Case("a server path as the body", lambda s, f: s.post(str((SAMPLES / "two_faces.jpg").resolve()).encode()), (415,), "not an image"),
    Case("a server path as a form field", lambda s, f: s.post(
        b"--b0\r\nContent-Disposition: form-data; name=\"path\"\r\n\r\n/etc/passwd\r\n--b0--\r\n",
        "multipart/form-data; boundary=b0"), (400,), "'file'"),
    Case("SVG", lambda s, f: s.post(b'<svg xmlns="http://www.w3.org/2000/svg"/>', "image/svg+xml"), (415,), "not an image"),
    Case("zlib bytes, no image header", lambda s, f: s.post(zlib.compress(b"\0" * 100000), "image/png"), (415,), "not an image"),
]


def test_http_bad_input_matrix(server, files) -> None:  # type: ignore[no-untyped-def]
    """Every case: a 4xx with a one-line JSON error, and /healthz still answering after it.
    One test item for the whole matrix, so that pytest-xdist does not start a server per
    worker; every failing case is reported, not only the first."""
    failures = []
    for case in CASES:
        try:
            status, body = case.send(server, files)
            _check_error(status, body, case.status, case.needle)
            _still_serving(server)
        except AssertionError as exc:
            failures.append(f"{case.name}: {' '.join(str(exc).split())[:300]}")
    assert not failures, f"{len(failures)} of {len(CASES)} cases failed: " + " | ".join(failures)
    # Still answering photos; odd but valid images are handled as `fer predict` handles them:
    # a 16-bit PNG is rounded to the 8-bit one it was made from (x257), so the answers are
    # equal; a CMYK JPEG is converted, and its face found.
    status, body = server.post(sample("two_faces.jpg"), "image/jpeg")
    assert status == 200 and len(body["faces"]) == 2
    status8, png8 = server.post(files["png8"], "image/png")
    status16, png16 = server.post(files["png16"], "application/octet-stream")
    assert status8 == status16 == 200 and len(png8["faces"]) == 1
    assert png16["faces"] == png8["faces"]
    status, cmyk = server.post(files["cmyk"], "image/jpeg")
    assert status == 200 and len(cmyk["faces"]) == 1
    assert len(CASES) >= 10


# --------------------------------------------------------------------------- faults


def _hang_up_mid_upload(server: LiveServer) -> None:
    before = server.get("/healthz")[1]["requests"].get("disconnected", 0)
    data = sample("two_faces.jpg")
    server.raw(request_head(server.port, "image/jpeg", len(data)), [data[: len(data) // 3]], read=False)
    status, body = server.post(data, "image/jpeg")
    assert status == 200 and len(body["faces"]) == 2
    for _ in range(40):  # the server notices the hang-up when it next reads that socket
        if server.get("/healthz")[1]["requests"].get("disconnected", 0) > before:
            break
        threading.Event().wait(0.25)
    else:
        pytest.fail("the server never recorded the dropped upload")


def _slow_client(server: LiveServer) -> None:
    data = sample("astronaut.jpg")
    result: dict = {}

    def slow() -> None:  # 1/64 of the photo every 0.25 s: 16 s in all, four times the limit
        parts = [data[i:i + len(data) // 64 + 1] for i in range(0, len(data), len(data) // 64 + 1)]
        result["answer"] = server.raw(request_head(server.port, "image/jpeg", len(data)), parts,
                                      pause_s=0.25, timeout=60)

    t = threading.Thread(target=slow)
    t.start()
    status, body = server.post(sample("two_faces.jpg"), "image/jpeg")
    assert status == 200 and len(body["faces"]) == 2
    t.join(timeout=60)
    assert not t.is_alive()
    _check_error(*result["answer"], (408,), "did not arrive")
    _still_serving(server)


MALFORMED_MULTIPART = [
    (b"this is not multipart at all", "multipart/form-data; boundary=xyz"),
    (b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n\r\n\xff\xd8\xff",
     "multipart/form-data"),  # no boundary parameter
    (multipart("file", "a.jpg", sample("astronaut.jpg"))[0][:-40], multipart("file", "a.jpg", b"")[1]),  # cut short
]


def _malformed_multipart(server: LiveServer) -> None:
    for body, ctype in MALFORMED_MULTIPART:
        status, answer = server.post(body, ctype)
        assert status is not None and 400 <= status < 500, (body[:40], status, answer)
        assert set(answer) == {"error"} and "\n" not in answer["error"], answer
        good, faces = server.post(sample("grace_hopper.jpg"), "image/jpeg")
        assert good == 200 and len(faces["faces"]) == 1


def test_faults_dropped_slow_and_malformed_uploads_are_rejected_while_others_are_served(server) -> None:  # type: ignore[no-untyped-def]
    """One test item (one server under pytest-xdist): a client that hangs up mid-upload, a
    client whose body trickles in past --timeout-s (408), malformed multipart bodies."""
    _hang_up_mid_upload(server)
    _slow_client(server)
    _malformed_multipart(server)
    _many_refusals(server)


def _many_refusals(server: LiveServer) -> None:
    """100 refused requests (no detection runs for them) leave RSS within 16 MB."""
    rss0 = server.rss_kb()
    junk = np.random.default_rng(0).integers(0, 255, 200_000, dtype=np.uint8).tobytes()
    for i in range(100):
        status, _ = server.post(junk if i % 2 else b"", "image/jpeg")
        assert status in (400, 415)
    assert server.rss_kb() - rss0 < 16 * 1024

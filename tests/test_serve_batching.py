"""The micro-batcher's waiting rule: a batch waits for company only while requests are
pending (expect() without arrived() yet), and never longer than max_wait_ms."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from fercli.serve.batching import MicroBatcher


def _crops(*ids: int) -> np.ndarray:
    return np.stack([np.full((48, 48), i, np.uint8) for i in ids])


class _Recording:
    """A stand-in classify that records each batch's ids and when it ran."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.times: list[float] = []

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        self.batches.append([int(v) for v in crops[:, 0, 0]])
        self.times.append(time.monotonic())
        return np.zeros((len(crops), 2), np.float32)


def test_a_lone_face_with_nothing_pending_is_classified_without_waiting() -> None:
    clf = _Recording()
    b = MicroBatcher(clf, max_batch=32, max_wait_ms=500)
    try:
        for i in range(3):
            t0 = time.monotonic()
            b.submit(_crops(i)).result(10)
            assert time.monotonic() - t0 < 0.1  # not the 500 ms window
    finally:
        b.close()
    assert clf.batches == [[0], [1], [2]]
    assert b.pending == 0


def test_a_pending_request_joins_the_batch_the_first_face_opened() -> None:
    clf = _Recording()
    b = MicroBatcher(clf, max_batch=32, max_wait_ms=500)
    try:
        with b.expecting():  # the second request is detecting
            f1 = b.submit(_crops(1))
            time.sleep(0.05)
            f2 = b.submit(_crops(2))
        f1.result(10), f2.result(10)
    finally:
        b.close()
    assert clf.batches == [[1, 2]]


def test_the_batch_closes_when_the_pending_request_turns_out_to_have_no_face() -> None:
    clf = _Recording()
    b = MicroBatcher(clf, max_batch=32, max_wait_ms=500)
    try:
        b.expect()
        t0 = time.monotonic()
        f1 = b.submit(_crops(1))
        time.sleep(0.05)
        b.arrived()  # it found no face: nothing more is coming
        f1.result(10)
        assert time.monotonic() - t0 < 0.3
    finally:
        b.close()
    assert clf.batches == [[1]]


def test_a_pending_request_that_never_arrives_holds_the_batch_at_most_max_wait() -> None:
    clf = _Recording()
    b = MicroBatcher(clf, max_batch=32, max_wait_ms=150)
    try:
        b.expect()  # announced, never submitted nor arrived
        t0 = time.monotonic()
        b.submit(_crops(1)).result(10)
        waited = time.monotonic() - t0
        assert 0.1 <= waited < 0.5, waited
        assert b.pending == 1
    finally:
        b.close()
    assert clf.batches == [[1]]


def test_expecting_counts_down_when_the_block_raises() -> None:
    b = MicroBatcher(_Recording(), max_batch=4, max_wait_ms=10)
    try:
        try:
            with b.expecting():
                assert b.pending == 1
                raise ValueError("decode failed")
        except ValueError:
            pass
        assert b.pending == 0
        b.arrived()  # an extra arrived() never makes the count negative
        assert b.pending == 0
    finally:
        b.close()


def test_many_threads_announcing_then_submitting_all_get_their_rows() -> None:
    clf = _Recording()
    b = MicroBatcher(lambda c: (clf(c), c[:, 0, :2].astype(np.float32))[1], max_batch=8, max_wait_ms=50)
    results: dict[int, float] = {}

    def request(i: int) -> None:
        with b.expecting():
            time.sleep(0.002 * (i % 4))  # "detection"
            fut = b.submit(_crops(i))
        results[i] = float(fut.result(10)[0, 0])

    threads = [threading.Thread(target=request, args=(i,)) for i in range(24)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    finally:
        b.close()
    assert results == {i: float(i) for i in range(24)}
    assert sum(len(x) for x in clf.batches) == 24 and max(len(x) for x in clf.batches) <= 8
    assert b.pending == 0


# --------------------------------------------------------------------------- through the app


def test_the_server_answers_one_client_without_waiting_out_max_wait_and_counts_every_request_down() -> None:
    """With --max-wait-ms 1000, one client's photo is answered well inside that window (no
    other request is detecting); after faces, no face, a corrupt image and a concurrent burst
    the pending count is back at zero."""
    import cv2
    from fastapi.testclient import TestClient
    from serving import sample

    import fercli
    from fercli.serve.app import create_app
    from fercli.serve.config import ServeConfig

    rec = fercli.Recognizer()
    data = sample("astronaut.jpg")
    with TestClient(create_app(ServeConfig(max_wait_ms=1000), recognizer=rec)) as client:
        batcher = client.app.state.service.batcher  # type: ignore[attr-defined]
        client.post("/v1/predict", content=data, headers={"Content-Type": "image/jpeg"})  # warm
        for _ in range(3):
            t0 = time.monotonic()
            r = client.post("/v1/predict", content=data, headers={"Content-Type": "image/jpeg"})
            assert r.status_code == 200 and len(r.json()["faces"]) == 1
            assert time.monotonic() - t0 < 0.7  # detection + classify, not the 1000 ms window
        _, blank = cv2.imencode(".png", np.full((120, 160), 200, np.uint8))
        assert client.post("/v1/predict", content=blank.tobytes(),
                           headers={"Content-Type": "image/png"}).json()["faces"] == []
        assert client.post("/v1/predict", content=data[:len(data) // 2],  # truncated: no EOI
                           headers={"Content-Type": "image/jpeg"}).status_code == 422
        assert batcher.pending == 0
        with ThreadPoolExecutor(4) as ex:
            codes = list(ex.map(lambda _: client.post("/v1/predict", content=data, headers={
                "Content-Type": "image/jpeg"}).status_code, range(8)))
        assert codes == [200] * 8 and batcher.pending == 0


def test_a_request_is_not_pending_once_its_faces_are_queued() -> None:
    """expecting()'s submit counts the request as arrived as its faces are queued: a lone
    client's batch never waits (max_wait_ms) for the very request it holds."""
    clf = _Recording()
    b = MicroBatcher(clf, max_batch=32, max_wait_ms=500)
    try:
        for i in range(5):
            with b.expecting() as submit:
                t0 = time.monotonic()
                submit(_crops(i)).result(10)  # answered while the block is still open
                assert time.monotonic() - t0 < 0.1 and b.pending == 0
            assert b.pending == 0
        with b.expecting() as submit:  # a refused submit still counts the request down
            try:
                submit(np.zeros((0, 48, 48), np.uint8))
            except ValueError:
                pass
        assert b.pending == 0
    finally:
        b.close()
    assert clf.batches == [[0], [1], [2], [3], [4]]

"""Helpers for the `fer serve` tests: a real uvicorn process on a free loopback port, and
plain HTTP/1.1 requests to it (http.client and raw sockets, so that a test can also send
what a well-behaved client library never would)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_images"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """`python -m fercli serve --port N ...` in a child process, ready once /healthz answers."""

    def __init__(self, log_dir: Path, *args: str, startup_s: float = 180.0) -> None:
        self.port = free_port()
        self.host = "127.0.0.1"
        self.url = f"http://{self.host}:{self.port}"
        self.log = log_dir / f"serve-{self.port}.log"
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fercli", "serve", "--port", str(self.port),
                 "--log-level", "warning", *args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + startup_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fer serve exited with {self.proc.returncode}: {self.log_text()[-2000:]}")
            try:
                if self.get("/healthz")[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"fer serve did not answer /healthz within {startup_s:.0f} s: "
                                   f"{self.log_text()[-2000:]}")
            time.sleep(0.25)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)

    def rss_kb(self) -> int:
        """The server process's resident set (VmRSS, kB) from /proc."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS line")

    # ------------------------------------------------------------------ requests

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 120.0) -> tuple[int, dict]:
        """(status, parsed JSON body); the body must be JSON (an AssertionError if not)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            raise AssertionError(f"{method} {path}: {resp.status} with a body that is not JSON: {raw[:200]!r}") from None

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, dict]:
        return self.request("GET", path, timeout=timeout)

    def post(self, body: bytes, content_type: str | None = "application/octet-stream",
             timeout: float = 120.0, **headers: str) -> tuple[int, dict]:
        h = dict(headers)
        if content_type is not None:
            h["Content-Type"] = content_type
        return self.request("POST", "/v1/predict", body, h, timeout=timeout)

    def raw(self, head: bytes, body_parts: list[bytes], pause_s: float = 0.0,
            read: bool = True, timeout: float = 60.0) -> tuple[int | None, dict | None]:
        """Send bytes as they are over a fresh socket (the request head, then the body in
        parts with `pause_s` between them); (status, JSON) of the answer, or (None, None)
        when `read` is False (the client hangs up) or the server closed without one."""
        s = socket.create_connection((self.host, self.port), timeout=timeout)
        try:
            s.sendall(head)
            for part in body_parts:
                if pause_s:
                    time.sleep(pause_s)
                try:
                    s.sendall(part)
                except OSError:  # the server answered early (413, 408) and closed
                    break
            if not read:
                return None, None
            data = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except OSError:
                    break
                if not chunk:
                    break
                data += chunk
                if b"\r\n\r\n" in data:
                    head_end = data.index(b"\r\n\r\n")
                    headers = data[:head_end].decode("latin-1").lower()
                    length = next((int(ln.split(":")[1]) for ln in headers.split("\r\n")
                                   if ln.startswith("content-length:")), None)
                    if length is not None and len(data) >= head_end + 4 + length:
                        break
        finally:
            s.close()
        if not data:
            return None, None
        head_end = data.index(b"\r\n\r\n")
        status = int(data.split(b" ", 2)[1])
        return status, json.loads(data[head_end + 4:])


def request_head(port: int, content_type: str, length: int) -> bytes:
    return (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\nConnection: close\r\n\r\n").encode()


def multipart(field: str, filename: str, data: bytes, ctype: str = "image/jpeg",
              boundary: str = "fer-test-boundary-7d1a") -> tuple[bytes, str]:
    """(body, Content-Type) of a multipart/form-data body with one file field."""
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {ctype}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def write_y4m(photo: Path, out: Path, size: tuple[int, int] = (640, 480), frames: int = 2) -> Path:
    """A short YUV 4:2:0 video of one still photo (letterboxed to `size`), the format
    Chromium's --use-file-for-fake-video-capture plays in a loop."""
    w, h = size
    with Image.open(photo) as im:
        im = im.convert("RGB")
        im.thumbnail((w, h))
        canvas = Image.new("RGB", (w, h), (0, 0, 0))
        canvas.paste(im, ((w - im.width) // 2, (h - im.height) // 2))
    ycc = np.asarray(canvas.convert("YCbCr"))  # (h, w, 3) uint8, BT.601 full range
    y = ycc[:, :, 0]
    # 4:2:0: chroma averaged over 2x2 blocks
    u, v = (ycc[:, :, c].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)).round().astype(np.uint8) for c in (1, 2))
    frame = b"FRAME\n" + y.tobytes() + u.tobytes() + v.tobytes()
    out.write_bytes(f"YUV4MPEG2 W{w} H{h} F10:1 Ip A1:1 C420jpeg\n".encode() + frame * frames)
    return out

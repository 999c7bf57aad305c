"""fercli.files.read_json: the one reader of JSON records, with one failure behaviour."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fercli.errors import FerError
from fercli.files import read_json


def test_reads_an_object(tmp_path: Path) -> None:
    p = tmp_path / "config.json"
    p.write_text('{"config": {"lr": 0.001}, "device": "cpu"}')
    assert read_json(p) == {"config": {"lr": 0.001}, "device": "cpu"}
    assert read_json(str(p), "run config")["device"] == "cpu"


@pytest.mark.parametrize("content, why", [
    (None, "no such file"),
    ('{"lr": 0.001', "not a valid run config"),  # truncated
    (b"\xff\xfe\x00garbage", "not a valid run config"),  # not UTF-8
    ("[1, 2]", "a JSON object was expected, not list"),
    ("", "not a valid run config"),
])
def test_every_failure_is_one_fer_error_naming_the_file(tmp_path: Path, content, why) -> None:
    p = tmp_path / "run" / "config.json"
    p.parent.mkdir()
    if isinstance(content, bytes):
        p.write_bytes(content)
    elif content is not None:
        p.write_text(content)
    with pytest.raises(FerError) as exc:
        read_json(p, "run config")
    msg = str(exc.value)
    assert msg.startswith(f"{p}: ") and why in msg and "\n" not in msg


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs file permissions (not root)")
def test_an_unreadable_file_is_a_fer_error(tmp_path: Path) -> None:
    p = tmp_path / "metrics.json"
    p.write_text("{}")
    p.chmod(0)
    try:
        with pytest.raises(FerError, match=f"{p}: cannot read this metrics record"):
            read_json(p, "metrics record")
    finally:
        p.chmod(0o600)


def test_a_directory_is_a_fer_error(tmp_path: Path) -> None:
    with pytest.raises(FerError, match="cannot read this JSON record"):
        read_json(tmp_path)

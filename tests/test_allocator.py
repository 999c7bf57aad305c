"""`fer` puts torch's CPU allocator on transparent huge pages (fercli.device.prefer_huge_pages).

Measured in fresh processes (torch reads the setting once): allocate, touch and free a tensor
the size of the B-CNN head's features at batch 64, then do it again and count the minor page
faults of the second round (getrusage): 4 KiB pages fault 16,384 times, 2 MiB pages about 32.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fercli import device

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")

ROUND = """
import resource, sys
from fercli.device import prefer_huge_pages
on = prefer_huge_pages()
import torch
def once():
    x = torch.empty(64, 512 * 512)  # 64 MiB fp32: the head's (N, 512*512) features at batch 64
    x.fill_(1.0)                    # touch every page
    del x
once()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
once()
print(on, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(env_value: str | None) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if k != device.HUGE_PAGES_ENV}
    if env_value is not None:
        env[device.HUGE_PAGES_ENV] = env_value
    out = subprocess.run([sys.executable, "-c", ROUND], capture_output=True, text=True, check=True, env=env)
    on, n = out.stdout.split()
    return on == "True", int(n)


@pytest.mark.skipif(not THP.is_file() or "[never]" in THP.read_text(), reason="the kernel offers no huge pages")
def test_the_head_sized_block_faults_in_huge_pages_unless_the_user_says_no():
    pages = 64 * 512 * 512 * 4 // 4096  # 16,384 pages of 4 KiB
    on, huge = faults(None)  # fer's default
    off, small = faults("0")  # the user's word wins
    assert on and not off
    assert small > pages // 2
    assert huge < pages // 8


def test_fer_sets_it_before_any_command_imports_torch(monkeypatch):
    calls = []
    monkeypatch.setattr("fercli.cli.prefer_huge_pages", lambda: calls.append(1) or True)
    monkeypatch.setattr("fercli.cli.app", lambda **kw: calls.append(2))
    from fercli.cli import main

    main()
    assert calls == [1, 2]


def test_too_late_once_torch_is_imported(monkeypatch):
    import torch  # noqa: F401

    monkeypatch.delenv(device.HUGE_PAGES_ENV, raising=False)
    assert device.prefer_huge_pages() is False and device.HUGE_PAGES_ENV not in os.environ

"""The README's benchmark commands start and print figures (small sizes; wrk ones: --help)."""

import subprocess
import sys

import pytest
from django.conf import settings

WRK_BENCHES = ["run.py", "fanout.py", "tracking.py", "snapshots.py", "admin.py"]


def bench(*args: str, timeout: float = 300) -> str:
    result = subprocess.run(
        [sys.executable, *args], cwd=settings.BASE_DIR, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_the_collector_bench_prints_each_mode(tmp_path):
    out = bench("bench/collector.py", "--database-url", f"sqlite:///{tmp_path}/gc.sqlite3",
                "--bulks", "1", "--rounds", "1")  # fmt: skip
    modes = [line.split("  ")[1].strip() for line in out.splitlines() if "us CPU per op" in line]
    assert [mode.split()[0] for mode in modes] == ["untuned", "frozen", "frozen,"]


def test_the_expiry_bench_removes_every_key(tmp_path):
    out = bench("bench/expiry.py", "--database-url", f"sqlite:///{tmp_path}/exp.sqlite3",
                "--keys", "300", "--limit", "100")  # fmt: skip
    assert "300 expired keys removed in 3 sweeps of up to 100" in out


@pytest.mark.parametrize("script", WRK_BENCHES)
def test_every_other_bench_starts(script):
    assert "usage:" in bench(f"bench/{script}", "--help", timeout=120)

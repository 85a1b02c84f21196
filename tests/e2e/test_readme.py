"""The README is executable truth: its shell examples run, in order, on a fresh store.

The convention (also stated in an HTML comment at the top of README.md, for whoever adds an
example):

- A fenced block tagged ```sh is run. All of them run in document order, in one bash session
  (so a variable set in one block is there in the next), with `set -euo pipefail`: every
  command must succeed.
- `curl` there fails on an HTTP status of 400 or more (the test wraps it), so every request
  shown must succeed on the store as the examples before it left it. Show an error response in
  a ```text block instead.
- A block tagged ```text shows output and is not run; untagged blocks (install commands,
  servers that run forever) are not run either.
- The session starts in a fresh directory holding `.venv` and `manage.py` (the checkout's),
  with `TOKEN` set to the demo staff token that `manage.py serve` printed, against that fresh
  `serve`; `127.0.0.1:8081` in a block is replaced by the test server's address.
"""

import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from .conftest import ROOT, _free_port, start_serve

pytestmark = pytest.mark.e2e

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
BLOCK_MARK = "@@readme-block {}@@"

# `curl` that fails on HTTP errors and still prints the body (curl -f would hide it).
PREAMBLE = r"""
set -euo pipefail
curl() {
    local out status
    out=$(command curl "$@" -w '\n%{http_code}') || return $?
    status=${out##*$'\n'}
    printf '%s\n' "${out%$'\n'*}"
    if [ "$status" -ge 400 ]; then
        echo "README example got HTTP $status: curl $*" >&2
        return 22
    fi
}
"""


def sh_blocks(text: str) -> list[str]:
    return [body for tag, body in FENCE.findall(text) if tag == "sh"]


@pytest.fixture(scope="module")
def readme_server(tmp_path_factory):
    """`manage.py serve` on a fresh SQLite store; yields (address, token, env)."""
    work = tmp_path_factory.mktemp("readme")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        DATABASE_URL=f"sqlite:///{work / 'readme.sqlite3'}",
        STATE_SNAPSHOT_DIR=str(work / "snapshots"),
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(ROOT),
        LOG_LEVEL="WARNING",
    )
    port = _free_port(set())
    process, token = start_serve(env, port, work / "serve.log")
    try:
        yield f"127.0.0.1:{port}", token, env, work
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)


def test_readme_has_examples_to_run():
    blocks = sh_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 5
    assert any("curl" in block for block in blocks)


def test_every_readme_shell_example_runs_in_order_on_a_fresh_store(readme_server):
    address, token, env, work = readme_server
    shell = work / "shell"
    shell.mkdir()
    (shell / ".venv").symlink_to(Path(sys.executable).parent.parent)
    (shell / "manage.py").symlink_to(ROOT / "manage.py")
    blocks = sh_blocks((ROOT / "README.md").read_text())
    script = PREAMBLE + "".join(
        f"echo '{BLOCK_MARK.format(n)}'\n{block.replace('127.0.0.1:8081', address)}\n"
        for n, block in enumerate(blocks)
    )
    result = subprocess.run(
        ["bash", "-c", script], cwd=shell, env={**env, "TOKEN": token}, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    outputs = re.split(r"^@@readme-block \d+@@$", result.stdout, flags=re.MULTILINE)[1:]
    ran = len(outputs)
    assert result.returncode == 0, (
        f"README block {ran - 1} of {len(blocks)} failed:\n{blocks[ran - 1]}\n"
        f"--- its output:\n{outputs[-1] if outputs else ''}\n--- stderr:\n{result.stderr[-3000:]}"
        f"\n--- server log:\n{(work / 'serve.log').read_text()[-3000:]}"
    )
    assert ran == len(blocks)
    out = result.stdout
    # Key outputs, in the order the README shows them.
    assert '"value":{"bid":97000,"ask":97010}' in out  # the quick start's read
    assert '"swapped":true,"version":2' in out  # CAS by value on a fresh counter
    assert '"swapped":true,"version":3' in out  # then by version
    assert '"value":1,"version":1' in out  # incr created the rate-limit counter
    assert '"type":"state_change"' in out and '"key":"feature_flag:new_ui"' in out  # the stream
    assert '"checksum":"sha256:' in out  # a snapshot through the API
    assert "result: restored" in out or "restored" in out


def test_api_docs_work_offline_on_serve(readme_server):
    """/api/docs/ and every script and stylesheet it loads come from this server."""
    address, *_ = readme_server
    with urllib.request.urlopen(f"http://{address}/api/docs/", timeout=10) as response:
        page = response.read().decode()
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', page)
    assert assets, page[:500]
    for asset in assets:
        assert asset.startswith("/static/"), asset
        with urllib.request.urlopen(f"http://{address}{asset}", timeout=10) as response:
            assert response.status == 200 and len(response.read()) > 1000, asset

"""The admin and the live page in a real browser (Debian's Chromium, driven by Playwright).

`manage.py serve` runs as the README says (DEBUG=false, its own collectstatic, WhiteNoise),
on a database of its own; the browser logs in with the password serve prints.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import (
    ROOT,
    Server,
    _admin_execute,
    _free_port,
    _is_postgres,
    _postgres_url,
    _wait_ready,
)

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
TIMEOUT_MS = 20_000


class Served:
    """`manage.py serve` on one port, restartable (the live page must resume across it)."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env, self.port, self.log = env, port, log
        self.process: subprocess.Popen | None = None
        self.banner = self.first_banner = ""

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--port", str(self.port)],
            cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=self.log.open("a"), text=True,
        )  # fmt: skip
        lines = []
        while not lines or not lines[-1].startswith("  live page:"):
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"serve exited: {self.log.read_text()}")
            lines.append(line)
        self.banner = "".join(lines)
        if "shown this once" in self.banner:
            self.first_banner = self.banner
        _wait_ready(self.process, self.port, self.log, timeout=60)
        time.sleep(0.5)
        if self.process.poll() is not None:  # another process answered on our port
            raise RuntimeError(f"serve exited: {self.log.read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)

    def api(self, token: str) -> Server:
        return Server(port=self.port, pid=self.process.pid)

    def manage(self, *args: str) -> str:
        result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env,
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    """serve on a fresh database, with static files collected into a directory of its own."""
    from django.conf import settings

    home = tmp_path_factory.mktemp("admin-e2e")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        DEBUG="false",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
        STATIC_ROOT=str(home / "static"),
        STATE_SNAPSHOT_DIR=str(home / "snapshots"),
        STATE_PROGRESS_INTERVAL_SECS="1",
        STATE_STREAM_POLL_INTERVAL_SECS="0.5",
        STATE_PERSISTENCE_ENABLED="false",
        # Small, so that one bulk of 30 changes cuts the live page off as lagging.
        STATE_STREAM_QUEUE_SIZE="10",
    )
    db = settings.DATABASES["default"]
    name = f"statehub_e2e_admin_{os.getpid()}"
    if _is_postgres():
        _admin_execute(db, f'DROP DATABASE IF EXISTS "{name}"')
        _admin_execute(db, f'CREATE DATABASE "{name}"')
        env.update(DATABASE_URL=_postgres_url(db, name), REDIS_URL=settings.REDIS_URL)
    else:
        env["DATABASE_URL"] = f"sqlite:///{home / 'admin.sqlite3'}"
    server = Served(env, _free_port(set()), home / "serve.log")
    try:
        for attempt in range(3):
            try:
                server.start()
                break
            except RuntimeError as error:  # another process took the port between probe and bind
                if "Address already in use" not in str(error) or attempt == 2:
                    raise
                server.stop()
                server.port = _free_port({server.port})
        yield server
    finally:
        server.stop()
        if _is_postgres():
            _admin_execute(db, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def credentials(served) -> dict[str, str]:
    banner = served.first_banner
    return {
        "username": re.search(r"demo staff user: (\S+)", banner).group(1),
        "password": re.search(r"password:\s+(\S+)\s+\(shown this once", banner).group(1),
        "token": re.search(r"token:\s+(\w+)", banner).group(1),
    }


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        message = f"{CHROMIUM} is missing: apt-get install -y chromium"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def staff(browser, served, credentials):
    """A browser context logged in to the admin through its login form."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto(f"{served.base}/admin/")
    assert "/admin/login/" in page.url
    page.fill("#id_username", credentials["username"])
    page.fill("#id_password", credentials["password"])
    page.click("input[type=submit]")
    page.wait_for_url(f"{served.base}/admin/")
    yield context
    context.close()


@pytest.fixture(scope="module")
def live(staff, served):
    """The live page, open for the whole module: it must never need a reload."""
    page = staff.new_page()
    page.goto(f"{served.base}/admin/")
    page.click("text=Live state page")
    page.wait_for_url(f"{served.base}/admin/state/live/")
    wait_live(page)
    page.evaluate("window.__notReloaded = true")
    return page


def wait_live(page) -> None:
    page.wait_for_selector("#live-status[data-state=live]")


def put(served: Served, credentials, key: str, value) -> int:
    return served.api(credentials["token"]).put(key, value, credentials["token"])


def row(page, key: str):
    return page.locator(f'#live-events tr[data-key="{key}"]').first


def keep(page, name: str) -> None:
    """Save a screenshot for a person to look at, when STATEHUB_SCREENSHOT_DIR is set."""
    if target := os.environ.get("STATEHUB_SCREENSHOT_DIR"):
        page.screenshot(path=str(Path(target) / f"{name}.png"), full_page=True)


def test_static_files_are_served_with_debug_false(served):
    import urllib.request

    for path, kind in [("/static/admin/css/base.css", "text/css"),
                       ("/static/state/live.js", "javascript"),
                       ("/static/state/admin.css", "text/css")]:  # fmt: skip
        with urllib.request.urlopen(served.base + path, timeout=10) as response:
            assert response.status == 200 and kind in response.headers["Content-Type"], path


def test_log_in_edit_json_and_see_it_arrive_on_the_live_page(staff, live, served, credentials):
    put(served, credentials, "market:BTC", {"bid": 1, "ask": 2})
    row(live, "market:BTC").wait_for()

    editor = staff.new_page()
    editor.goto(f"{served.base}/admin/")
    header = editor.eval_on_selector("#header", "e => getComputedStyle(e).backgroundColor")
    assert header not in ("rgba(0, 0, 0, 0)", "transparent")  # the admin's CSS is served
    keep(editor, "index")
    editor.click("text=Entries")
    editor.fill("#searchbar", "market:")
    editor.press("#searchbar", "Enter")
    editor.click("text=market:BTC")
    textarea = editor.locator("textarea[name=value_text]")
    assert '"bid": 1' in textarea.input_value() and "\n  " in textarea.input_value()
    keep(editor, "entry-form")
    textarea.fill('{"bid": 5, "ask": 2}')
    change_page = editor.url
    editor.click("input[name=_save]")
    editor.wait_for_selector(".messagelist .success")

    change = live.locator('#live-events tr[data-key="market:BTC"]', has_text="bid: 1 → 5")
    change.wait_for()
    assert "admin" in change.inner_text()
    assert live.evaluate("window.__notReloaded") is True

    # A stale form in the browser: opened at version 2, the key moves on, save is refused.
    editor.goto(change_page)
    put(served, credentials, "market:BTC", {"bid": 6, "ask": 2})
    editor.locator("textarea[name=value_text]").fill('{"bid": 7}')
    editor.click("input[name=_save]")
    assert "now at version 3 (you opened version 2)" in editor.inner_text(".errorlist.nonfield")
    keep(editor, "stale-form")
    editor.close()


def test_the_live_page_filters_by_prefix_without_a_reload(live, served, credentials):
    live.fill("#live-prefix", "user:")
    live.wait_for_timeout(600)  # the filter applies 300 ms after typing stops
    wait_live(live)
    assert not row(live, "market:BTC").is_visible()  # old rows are filtered in place
    put(served, credentials, "market:BTC", {"bid": 8})
    put(served, credentials, "user:demo:prefs", {"theme": "dark"})
    row(live, "user:demo:prefs").wait_for()
    assert live.locator('#live-events tr[data-key="market:BTC"]:visible').count() == 0
    live.fill("#live-prefix", "")
    live.locator('#live-events tr[data-key="market:BTC"]:visible').first.wait_for()
    assert live.evaluate("window.__notReloaded") is True


def test_the_live_page_resumes_after_the_server_restarts(live, served, credentials):
    wait_live(live)
    served.stop()
    live.wait_for_selector("#live-status[data-state=reconnecting]")
    # Written by another process while no server runs: only a resume from the last revision
    # seen can show it.
    write = "services.state_set(key='market:while-down', value={'n': 1}, actor='cli')"
    served.manage("shell", "-c", f"from state import services; {write}")
    served.start()
    assert "shown this once" not in served.banner  # the password was shown at the first start
    row(live, "market:while-down").wait_for(timeout=40_000)
    wait_live(live)
    assert live.evaluate("window.__notReloaded") is True


def test_the_live_page_says_when_events_it_missed_were_compacted(live, served, credentials):
    wait_live(live)
    served.stop()
    live.wait_for_selector("#live-status[data-state=reconnecting]")
    writes = "; ".join(
        f"services.state_set(key='market:gone{i}', value={i}, actor='cli')" for i in range(3)
    )
    served.manage("shell", "-c", f"from state import services; {writes}; "
                  "services.events_compact(keep_count=1)")  # fmt: skip
    served.start()
    note = live.locator("#live-notices li[data-kind=behind]", has_text="no longer in the event log")
    note.wait_for(timeout=40_000)
    wait_live(live)
    put(served, credentials, "market:after-compaction", 1)
    row(live, "market:after-compaction").wait_for()
    assert live.evaluate("window.__notReloaded") is True


def test_the_live_page_says_when_it_lagged_and_catches_up(live, served, credentials):
    wait_live(live)
    token = credentials["token"]
    operations = [{"op": "set", "key": f"market:lag{i:02}", "value": i} for i in range(30)]
    status, body = served.api(token).request(
        "POST", "/api/v1/state/bulk", token, {"operations": operations}
    )
    assert status == 200, body
    live.locator("#live-notices li[data-kind=behind]", has_text="fell behind").wait_for()
    row(live, "market:lag29").wait_for()  # replayed from the log after the reconnect
    assert live.locator('#live-events tr[data-key^="market:lag"]').count() == 30
    wait_live(live)
    assert live.evaluate("window.__notReloaded") is True


def test_restore_a_snapshot_through_its_confirmation_page(
    staff, live, served, credentials, tmp_path
):
    admin = staff.new_page()
    admin.goto(f"{served.base}/admin/state/snapshot/")
    admin.click("text=Take a snapshot")
    admin.fill("#id_label", "before-experiment")
    admin.click("input[type=submit]")
    admin.wait_for_selector(".messagelist .success")

    put(served, credentials, "market:BTC", {"bid": 99})
    put(served, credentials, "market:experiment", True)
    row(live, "market:experiment").wait_for()

    admin.goto(f"{served.base}/admin/state/snapshot/")
    admin.locator("#result_list tbody tr").first.locator("text=restore…").click()
    admin.wait_for_selector("#restore-summary")
    assert admin.inner_text("#restore-removed") == "1"
    assert admin.inner_text("#restore-changed") == "1"
    assert admin.inner_text("#restore-added") == "0"
    assert "market:experiment" in admin.inner_text("#restore-removed-keys")
    assert "market:BTC" in admin.inner_text("#restore-changed-keys")
    keep(admin, "restore-confirmation")
    admin.click("#restore-confirm")
    admin.wait_for_selector(".messagelist .success")
    assert "Restored snapshot" in admin.inner_text(".messagelist")
    admin.close()

    live.wait_for_selector("#live-notices li[data-kind=reset]")
    live.locator("#live-events tr.state-reset-row").first.wait_for()
    api = served.api(credentials["token"])
    assert api.request("GET", "/api/v1/state/market:experiment", credentials["token"])[0] == 404
    btc = api.request("GET", "/api/v1/state/market:BTC", credentials["token"])[1]["data"]
    assert btc["value"] == {"bid": 8}

    put(served, credentials, "market:ETH", {"bid": 3010, "ask": 3011})
    row(live, "market:ETH").wait_for()
    shot = tmp_path / "live.png"
    live.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if target := os.environ.get("STATEHUB_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(target) / "live.png")

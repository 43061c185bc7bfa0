"""Fixtures of the web-app tests: a tiny checkpoint, the app running on a loopback port, and
headless Chromium driven by Selenium (installed by scripts/install_browser.sh when missing)."""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs/quick_schedules/tiny_vitb_cpu.yaml"
#: generous hang guard (never a pass/fail criterion): for the app to answer its first page load, and to stop
STARTUP_GUARD_S = 1800


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app_server(tiny_checkpoint, tmp_path_factory):
    """``cat-seg-app`` with the tiny model on 127.0.0.1 (a subprocess); yields its URL."""
    port = _free_port()
    log = tmp_path_factory.mktemp("app-log") / "app.log"
    # TMPDIR: the app's own output folder (tempfile.mkdtemp) is made there, to check its removal
    own_tmp = tmp_path_factory.mktemp("app-tmp")
    env = dict(os.environ, PYTHONPATH=str(REPO), GRADIO_ANALYTICS_ENABLED="False", OMP_NUM_THREADS="2",
               GRADIO_TEMP_DIR=str(tmp_path_factory.mktemp("gradio-tmp")), TMPDIR=str(own_tmp))
    cmd = [sys.executable, "-m", "cat_seg.cli.app", "--config-file", str(TINY_CONFIG),
           "--weights", tiny_checkpoint, "--device", "cpu", "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + STARTUP_GUARD_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the app exited with status {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the app did not answer within {STARTUP_GUARD_S} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    yield url
    proc.terminate()  # SIGTERM ends the app as Ctrl-C does: server closed, output folder removed
    try:
        status = proc.wait(timeout=STARTUP_GUARD_S)  # a hang guard only
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the app did not stop within {STARTUP_GUARD_S} s of SIGTERM:\n{log.read_text()[-3000:]}")
    left = sorted(p.name for p in own_tmp.glob("cat-seg-app-*"))
    assert status == 0 and not left, f"SIGTERM: exit status {status}, left behind {left}:\n{log.read_text()[-3000:]}"


@pytest.fixture(scope="session")
def browser_binaries():
    """``(chromium, chromedriver)`` paths, installed through the project's set-up script when
    missing; skips with the script's reason when that is impossible (no root, no network)."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        proc = subprocess.run([str(REPO / "scripts/install_browser.sh")], capture_output=True, text=True,
                              timeout=STARTUP_GUARD_S)
        if proc.returncode != 0:
            lines = (proc.stdout + proc.stderr).strip().splitlines()
            pytest.skip(lines[-1] if lines else "scripts/install_browser.sh failed")
    return shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def browser(browser_binaries, tmp_path):
    """Headless Chromium (Selenium) downloading into ``browser.download_dir``."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is installed by the test extra")
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = browser_binaries
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1500,1150", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option("prefs", {
        "download.default_directory": str(downloads),
        "download.prompt_for_download": False,
        "safebrowsing.enabled": True,
    })
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    driver.download_dir = downloads
    yield driver
    driver.quit()

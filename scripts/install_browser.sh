#!/usr/bin/env bash
# Make a headless browser available for the web-app test (tests/app): Debian's `chromium`
# and `chromium-driver` (Selenium drives them; nothing is downloaded by Selenium itself).
#
#   scripts/install_browser.sh          # installs with apt-get when run as root (CI) or with
#                                       # password-less sudo; otherwise says what to run
# Exit status 0 when /usr/bin/chromium and chromedriver are usable afterwards, 1 otherwise
# (the last line of the output then says why; the test skips with it).
set -uo pipefail

have() { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }
if have; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser: no apt-get on this system: install Chromium and its chromedriver with your package manager"
  exit 1
fi
if [ "$(id -u)" = "0" ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"
else
  echo "install_browser: not root and no password-less sudo: run 'sudo apt-get install chromium chromium-driver'"
  exit 1
fi
echo "[browser] installing chromium and chromium-driver with apt-get"
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get update -q >/dev/null 2>&1; then
  echo "install_browser: apt-get update failed (no network?): run 'apt-get install chromium chromium-driver' when online"
  exit 1
fi
if ! $SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1; then
  echo "install_browser: apt-get install chromium chromium-driver failed"
  exit 1
fi
if have; then
  echo "[browser] ok: $(chromium --version 2>/dev/null)"
  exit 0
fi
echo "install_browser: chromium / chromedriver still not on PATH after apt-get"
exit 1

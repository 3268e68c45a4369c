#!/usr/bin/env bash
# Install Debian's chromium and chromium-driver for the browser tests (report.html, the web demo),
# when they are not here. Never fails the caller: without them those tests are skipped, saying why.
set -u
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
source "$(dirname "$0")/apt-install.sh"
apt_install chromium "the browser tests will be skipped" chromium chromium-driver
exit 0

#!/usr/bin/env bash
# Install Debian's chromium and chromium-driver for the browser tests (report.html, the web demo),
# when they are not here. Never fails the caller: without them those tests are skipped, saying why.
set -u
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "note: chromium not found and apt-get is not here; the browser tests will be skipped"
  exit 0
fi
if [ "$(id -u)" = 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "note: chromium not found; install it with: sudo apt-get install chromium chromium-driver (else the browser tests are skipped)"
  exit 0
fi
echo "Installing chromium and chromium-driver (Debian) for the browser tests..."
if "${sudo[@]}" apt-get update -qq >/dev/null && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; then
  echo "chromium installed"
else
  echo "note: apt could not install chromium; the browser tests will be skipped"
fi
exit 0

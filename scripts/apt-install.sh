#!/usr/bin/env bash
# apt_install WHAT FALLBACK PKG...: install Debian packages as root or with passwordless sudo.
# Sourced by get-fashion-mnist.sh and get-chromium.sh. Never fails the caller: where apt-get, root
# or sudo is missing, or apt fails, it prints one note ending in FALLBACK (what happens instead).
apt_install() {
  local what="$1" fallback="$2"
  shift 2
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "note: $what not found and apt-get is not here; $fallback"
    return 0
  fi
  local sudo=()
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo=(sudo -n)
    else
      echo "note: $what not found; install it with: sudo apt-get install $* ($fallback)"
      return 0
    fi
  fi
  echo "Installing $what (Debian: $*)..."
  if "${sudo[@]}" apt-get update -qq >/dev/null && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null; then
    echo "$what installed"
  else
    echo "note: apt could not install $*; $fallback"
  fi
  return 0
}

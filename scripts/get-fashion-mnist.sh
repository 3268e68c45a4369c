#!/usr/bin/env bash
# Install the full Fashion-MNIST (Debian package dataset-fashion-mnist) when no copy is found.
# Never fails the caller: the tests need no real data, and `cnnlab train` says what to do when
# it finds none (and tries torchvision's download where a network exists).
set -u
pkg=dataset-fashion-mnist
stem=train-images-idx3-ubyte
for d in "${CNNLAB_DATA:-}" "${CNNLAB_DATA:-}/FashionMNIST/raw" data/FashionMNIST/raw /usr/share/datasets/fashion-mnist; do
  if [ -n "$d" ] && { [ -f "$d/$stem.gz" ] || [ -f "$d/$stem" ]; }; then
    exit 0
  fi
done
if ! command -v apt-get >/dev/null 2>&1; then
  echo "note: Fashion-MNIST not found and apt-get is not here; cnnlab train will try to download it, or pass --data PATH"
  exit 0
fi
if [ "$(id -u)" = 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "note: Fashion-MNIST not found; install it with: sudo apt-get install $pkg (or pass --data PATH to cnnlab train)"
  exit 0
fi
echo "Installing Fashion-MNIST (Debian package $pkg)..."
if "${sudo[@]}" apt-get update -qq >/dev/null && "${sudo[@]}" apt-get install -y -qq "$pkg" >/dev/null; then
  echo "Fashion-MNIST installed in /usr/share/datasets/fashion-mnist"
else
  echo "note: apt could not install $pkg; cnnlab train will try to download Fashion-MNIST, or pass --data PATH"
fi
exit 0

#!/usr/bin/env bash
# Install the full Fashion-MNIST (Debian package dataset-fashion-mnist) when no copy is found.
# Never fails the caller: the tests need no real data, and `cnnlab train` says what to do when
# it finds none (and tries torchvision's download where a network exists).
set -u
stem=train-images-idx3-ubyte
for d in "${CNNLAB_DATA:-}" "${CNNLAB_DATA:-}/FashionMNIST/raw" data/FashionMNIST/raw /usr/share/datasets/fashion-mnist; do
  if [ -n "$d" ] && { [ -f "$d/$stem.gz" ] || [ -f "$d/$stem" ]; }; then
    exit 0
  fi
done
source "$(dirname "$0")/apt-install.sh"
apt_install Fashion-MNIST "cnnlab train will try to download it, or pass --data PATH" dataset-fashion-mnist
exit 0

#!/usr/bin/env bash
# Install recipe-sweep and what it needs on a fresh Debian/Ubuntu machine:
# the Fashion-MNIST package (real data without internet) and the Python
# packages, PyTorch included. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null \
        || echo "note: dataset-fashion-mnist is not available; set data.download=true to fetch Fashion-MNIST"
fi

# The PostgreSQL server (its binaries) for the many-worker tests, which start
# a throwaway server of their own (tests/postgres.py); they are skipped without it.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null \
        && command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null \
        || echo "note: could not install postgresql; the PostgreSQL worker tests will be skipped"
fi

# Chromium and its WebDriver for the headless-browser test of `sweep report`
# (tests/test_report.py); it is skipped, saying why, without them.
if ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; } && command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
        || echo "note: could not install chromium; the browser test of the report will be skipped"
fi

PIP="python3 -m pip"
# torch first, pinned to the releases this project is tested with (pip finds
# them in a local wheel cache where one is configured).
python3 -c "import torch, torchvision" 2>/dev/null \
    || $PIP install -q --root-user-action=ignore "torch==2.14.1" "torchvision==0.29.1"
$PIP install -q --root-user-action=ignore -e ".[test]"

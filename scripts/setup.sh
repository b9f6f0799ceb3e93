#!/usr/bin/env bash
# One-time set-up on Debian/Ubuntu: the system libraries FFCV and our region decoder compile
# against, then this package with its test extras into one Python environment, reachable
# afterwards as .venv/ whether or not anything is activated:
#   - a virtual or conda environment already active is used as it is (.venv links to it);
#   - otherwise .venv is created with `python3 -m venv --system-site-packages`, so a CUDA
#     build of torch/torchvision already installed in the base interpreter is kept when it
#     satisfies pyproject's range. The system Python itself is never written to (PEP 668).
# Safe to run again: it installs only what is missing. PYTHON=/path/to/python3 picks the base.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
PYTHON=${PYTHON:-python3}
fail() { echo "setup: error: $*" >&2; exit 1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@" 2>/dev/null || fail "needs root for: $* (run as root, or with sudo rights)"; fi; }

apt_install() {
  local missing=() pkg
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  ((${#missing[@]})) || return 0
  command -v apt-get >/dev/null || fail "missing system packages ${missing[*]} and no apt-get: install them with your package manager"
  echo "setup: installing system packages: ${missing[*]}"
  as_root apt-get update -qq >/dev/null || fail "apt-get update failed: check the network to the Debian/Ubuntu mirrors"
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || fail "apt-get install ${missing[*]} failed: install them by hand, then run this again"
}

# g++ and libjpeg-dev: our region decoder; libturbojpeg, OpenCV, pkg-config: FFCV's extension.
apt_install libturbojpeg0-dev libjpeg-dev libopencv-dev pkg-config g++

active_env="${VIRTUAL_ENV:-${CONDA_PREFIX:-}}"
if [ -n "$active_env" ] && [ "$(realpath "$active_env")" != "$(realpath -m "$VENV")" ]; then
  kind=$([ -n "${VIRTUAL_ENV:-}" ] && echo "virtual" || echo "conda")
  echo "setup: using the active $kind environment $active_env (.venv links to it)"
  [ ! -e "$VENV" ] || [ -L "$VENV" ] || fail "$VENV exists and is not a link: remove it to use $active_env"
  ln -sfn "$active_env" "$VENV"
elif [ ! -x "$VENV/bin/python" ]; then
  command -v "$PYTHON" >/dev/null || fail "no $PYTHON on PATH: install python3 (>= 3.10)"
  if ! "$PYTHON" -c "import ensurepip, venv" 2>/dev/null; then
    minor=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    apt_install python3-venv "python$minor-venv"
  fi
  echo "setup: creating $VENV from $(command -v "$PYTHON") (system site-packages visible)"
  "$PYTHON" -m venv --system-site-packages "$VENV" || fail "could not create $VENV with $PYTHON -m venv"
else
  echo "setup: using $VENV ($(readlink -f "$VENV/bin/python"))"
fi

PY="$VENV/bin/python"
# torch's launcher lives beside the interpreter that installed torch; a torch seen through the
# system site-packages leaves none in .venv, so the README's .venv/bin/torchrun gets one here.
if [ ! -e "$VENV/bin/torchrun" ]; then
  printf '#!/bin/sh\nexec "$(dirname "$0")/python" -m torch.distributed.run "$@"\n' >"$VENV/bin/torchrun"
  chmod +x "$VENV/bin/torchrun"
fi
# The editable install is quick when nothing changed; pip needs the registry only for what is missing.
"$PY" -m pip install -q -e '.[test]' \
  || fail "pip could not install the package: check the network to the package registry (or its mirror), then run this again"

"$PY" - <<'EOF' || fail "the environment does not import torch, ffcv and ffcv_imagenet"
import sys
from importlib.metadata import version
import ffcv, torch, ffcv_imagenet  # noqa: F401
cuda = torch.cuda.is_available()
gpus = torch.cuda.device_count() if cuda else 0
print(f"setup: ok | python {sys.executable} ({sys.version.split()[0]}) | torch {torch.__version__}"
      f" | ffcv {version('ffcv')} | cuda {'yes' if cuda else 'no'} | GPUs {gpus}")
EOF
echo "setup: next: .venv/bin/python write_datasets.py demo data/demo && .venv/bin/python train_imagenet.py --config rcfg/demo.yaml"

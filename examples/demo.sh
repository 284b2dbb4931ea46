#!/usr/bin/env bash
# The README's demo: install lite into .demo-venv and train a small CNN on scikit-learn's digits
# with DDP on 2 CPU processes. Needs only Python 3.10+ and pip.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.demo-venv"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
# torch is pinned: an unpinned torch would pull a multi-GB CUDA build.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${LITE_TORCH:-torch==2.13.0}" scikit-learn tqdm \
  "$root/packages/lite-devices" "$root/packages/lite-precision" "$root/packages/lite-collectives" \
  "$root/packages/lite-data" "$root/packages/lite-strategies" "$root/packages/lite-facade"
cd "$root/examples/image_classifier"
exec "$venv/bin/python" train_lite.py --strategy ddp --devices 2 --accelerator cpu "$@"

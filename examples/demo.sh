#!/usr/bin/env bash
# The README's demo: install lite into .demo-venv and train a small CNN on scikit-learn's digits
# with DDP on 2 CPU processes. Needs only Python 3.10+ and pip.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.demo-venv"
python="${PYTHON:-python3}"
torch_req="${LITE_TORCH:-torch==2.13.0}"
if [ ! -x "$venv/bin/python" ]; then
  cat <<EOF
First run: creating $venv and installing into it
  $torch_req, scikit-learn, tqdm
  and lite's six packages from $root/packages (lite-devices, lite-precision,
  lite-collectives, lite-data, lite-strategies, lite-facade).
That takes about a minute when torch's wheel is already on this machine (pip's cache), and longer
when it must be downloaded: about 200 MB for the CPU build, several GB for the default CUDA build
that PyPI serves on Linux. For the CPU build:
  PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu LITE_TORCH=torch==2.13.0+cpu bash examples/demo.sh
Later runs reuse $venv (delete it to start over).
EOF
  "$python" -m venv "$venv"
fi
# torch is pinned: an unpinned torch would pull a multi-GB CUDA build.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$torch_req" scikit-learn tqdm \
  "$root/packages/lite-devices" "$root/packages/lite-precision" "$root/packages/lite-collectives" \
  "$root/packages/lite-data" "$root/packages/lite-strategies" "$root/packages/lite-facade"
cd "$root/examples/image_classifier"
exec "$venv/bin/python" train_lite.py --strategy ddp --devices 2 --accelerator cpu "$@"

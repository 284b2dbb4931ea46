#!/usr/bin/env bash
# The GPU check: every package's tests (the CUDA ones run for real) and the step benchmark on CUDA.
# For a machine that already has torch (CUDA), pytest and hypothesis and no network: the packages
# run from source via PYTHONPATH. With network, `nox -s gpu` does the same from built wheels.
set -u
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/gpu-check}"; mkdir -p "$out"
export PYTHONPATH="$(ls -d "$PWD"/packages/*/src | tr '\n' ':')${PYTHONPATH:-}"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
py="${PYTHON:-python3}"
nvidia-smi -L | tee "$out/gpu.txt"
"$py" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$out/gpu.txt"
status=0
for pkg in lite-devices lite-precision lite-collectives lite-data lite-strategies lite-facade; do
  echo "== $pkg"
  timeout 300 "$py" -m pytest -p lite_testing.plugin -p no:cacheprovider -q -rs "packages/$pkg/tests" \
    -o addopts="" --timeout 120 > "$out/$pkg.log" 2>&1 || status=1
  tail -n 3 "$out/$pkg.log"
  grep -E "cuda|CUDA|gpu" "$out/$pkg.log" | grep -E "FAILED|SKIPPED" | head -20
done
echo "== bench (cuda)"
timeout 240 "$py" bench/bench_step.py --device cuda --steps 300 --rounds 5 --peers 2>&1 | tee "$out/bench_cuda.md" | tail -n 20
exit $status

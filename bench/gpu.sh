#!/usr/bin/env bash
# GPU runs on a lent GPU machine (CI has none). From the repo root there, with the wheels of
# ../shared/device/prepare.sh carried in .whl/ (and .model/minilm for the embedding parts):
#   bash bench/gpu.sh setup            install the carried wheels into /tmp/site
#   bash bench/gpu.sh tests [-k EXPR]  tests_gpu/ (GPU code paths)
#   bash bench/gpu.sh dispatch|sampling|embed   the benchmarks, JSON into $OUT (or bench/results)
set -euo pipefail
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 \
  TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export KILN_POSTERIORDB=${KILN_POSTERIORDB:-$PWD/.posteriordb}
[ -d .model/minilm ] && export KILN_EMBED_MODEL_DEFAULT=$PWD/.model/minilm
out=${OUT:-bench/results}
what=${1:-}; shift || true
case "$what" in
  setup)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
    nvidia-smi -L; python3 -c 'import jax, torch; print("jax", jax.__version__, jax.devices(), "torch", torch.__version__)' ;;
  tests)
    python3 -m pytest -q -p no:cacheprovider --durations=0 tests_gpu "$@" 2>&1 | tee "$out/gpu-tests.txt" ;;
  dispatch) python3 bench/dispatch.py --out "$out/dispatch-h200.json" "$@" ;;
  sampling) python3 bench/sampling.py --chains 4,1024,4096 --repeats 3 --skip pymc \
              --out "$out/sampling-h200.json" "$@" ;;
  embed) python3 bench/embed.py --model "$KILN_EMBED_MODEL_DEFAULT" --requests 256 --bulk 50000 \
           --out "$out/embed-h200.json" "$@" ;;
  *) echo "usage: bash bench/gpu.sh setup|tests|dispatch|sampling|embed" >&2; exit 2 ;;
esac

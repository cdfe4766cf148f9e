#!/usr/bin/env bash
# GPU runs on a lent GPU machine (CI has none). From the repo root there, with the wheels of
# ../shared/device/prepare.sh carried in .whl/ and the model in .model/:
#   bash bench/gpu.sh setup            install the carried wheels into /tmp/site; write random
#                                      MiniLM-shaped weights into .model/minilm when only
#                                      .model/minilm-cfg was carried (prepare.sh --model-config)
#   bash bench/gpu.sh tests [-k EXPR]  tests_gpu/ (GPU code paths)
#   bash bench/gpu.sh dispatch|sampling the benchmarks, JSON into $OUT (or bench/results)
#   bash bench/gpu.sh embed [ARGS]     issue 9 item 3, all of it: raw sentence-transformers
#                                      (batch sweep), kiln's Encoder, kiln.embed, `kiln serve`
#                                      under load, FastAPI and Ray Serve (swept) under the same
#                                      load: embed-<gpu>.json + serve-peers-<gpu>.json
#   bash bench/gpu.sh embed-kiln|peers the two halves, when one call cannot hold both
#   bash bench/gpu.sh rounds [ARGS]    bench/gateway_rounds.py: the gateway window after window,
#                                      with what each worker and agent waited for
#   bash bench/gpu.sh bulk-probe [ARGS] bench/bulk_probe.py: where kiln.embed's bulk time goes
# Every call writes the weights again when they are missing: .model travels with each call to a
# lent machine and replaces the one setup wrote (a second call on a warm machine found none).
# Without a GPU (here), embed / embed-kiln / peers run at --quick size with one torch thread.
# Ray Serve (the `bench` extra) imports one more package than kiln (grpcio-reflection; where the
# image's grpcio is too old for it, bench/serve_peers.py puts a stand-in in its place), and
# py-spy profiles the gateway (summary in the JSON, raw stacks in /tmp/kiln-prof):
#   EXTRA="grpcio-reflection==1.85.1 py-spy==0.4.3 pydantic-settings==2.16.3 python-dotenv==1.2.4 \
#     cachetools==8.0.3 httptools==0.6.4" bash ../shared/device/prepare.sh --model-config
# (kiln's own dependencies that the machine's image lacks: pydantic-settings, cachetools, and
# httptools, without which uvicorn falls back to h11 and the gateway figures are not kiln's;
# setup says which of them is missing.)
# When the halves run in two calls, the ratios are joined here afterwards:
#   python bench/embed.py --ratios bench/results/embed-h100.json \
#     --peers-json bench/results/serve-peers-h100.json
set -euo pipefail
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 \
  TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export KILN_POSTERIORDB=${KILN_POSTERIORDB:-$PWD/tests/data/posteriordb}
out=${OUT:-bench/results}
py=${PYTHON:-python3}
[ ! -d /tmp/site ] && [ -x .venv/bin/python ] && py=.venv/bin/python   # the CPU box here
weights() {
  if [ -d .model/minilm-cfg ] && [ ! -f .model/minilm/model.safetensors ] && [ -d /tmp/site ]; then
    $py .model/mkweights.py .model/minilm-cfg .model/minilm
  fi
}
[ "${1:-}" != setup ] && weights
[ -d .model/minilm ] && export KILN_EMBED_MODEL_DEFAULT=$PWD/.model/minilm
gpu() { command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; }
small=(); gpu || small=(--quick --threads 1)
# The README's figures: 4 gateway workers (8 did worse on a 16-core H100 node,
# bench/results/gateway-rounds-h100-workers.txt), 8 load generator processes, 15 s of warm load.
serving=(); gpu && serving=(--gateway-workers 4 --procs 8 --gateway-warmup 15)
model=(); [ -n "${KILN_EMBED_MODEL_DEFAULT:-}" ] && model=(--model "$KILN_EMBED_MODEL_DEFAULT")
what=${1:-}; shift || true
case "$what" in
  setup)
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
    weights
    nvidia-smi -L; $py -c 'import jax, torch; print("jax", jax.__version__, jax.devices(), "torch", torch.__version__)'
    for m in pydantic_settings cachetools httptools; do
      $py -c "import $m" 2>/dev/null || echo "MISSING: $m (kiln needs it; see the EXTRA line above)" >&2
    done
    $py -c 'import aiohttp, orjson, sys; sys.path.insert(0, "bench"); import serve_peers
serve_peers.reflection_stand_in(); import ray.serve; print("ray serve", ray.__version__)' ||
      echo "no Ray Serve here: the peers part will fail (see the EXTRA line above)" >&2 ;;
  tests)
    $py -m pytest -q -p no:cacheprovider --durations=0 tests_gpu "$@" 2>&1 | tee "$out/gpu-tests.txt" ;;
  dispatch) $py bench/dispatch.py --out "$out/dispatch-h200.json" "$@" ;;
  chees) $py bench/chees_metric.py --chains 4096 --repeats 3 --peer-chains 4,4096 --variants identity,ensemble+floor --out "$out/chees-metric-$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -oiE 'h100|h200|a100' | tr A-Z a-z || echo gpu).json" "$@" ;;
  sampling) $py bench/sampling.py --chains 4,1024,4096 --repeats 3 --skip pymc \
              --out "$out/sampling-h200.json" "$@" ;;
  embed) $py bench/embed.py "${model[@]}" "${small[@]}" "${serving[@]}" \
           --profile-dir /tmp/kiln-prof --out-dir "$out" "$@" ;;
  embed-kiln) $py bench/embed.py "${model[@]}" "${small[@]}" "${serving[@]}" \
                --profile-dir /tmp/kiln-prof --no-peers --out-dir "$out" "$@" ;;
  peers)
    tag=$($py -c 'import sys; sys.path.insert(0, "bench"); import serve_peers; print(serve_peers.device_tag())')
    quick=(); gpu || quick=(--quick)
    if gpu; then procs=(--procs 8); else procs=(); export OMP_NUM_THREADS=1; fi
    $py bench/serve_peers.py "${model[@]}" "${quick[@]}" "${procs[@]}" \
      --out "$out/serve-peers-$tag.json" "$@" ;;
  rounds) $py bench/gateway_rounds.py "$@" ;;
  bulk-probe) $py bench/bulk_probe.py --out "$out/bulk-probe.json" "$@" ;;
  *) echo "usage: bash bench/gpu.sh setup|tests|dispatch|sampling|embed|embed-kiln|peers|rounds|bulk-probe" >&2
     exit 2 ;;
esac

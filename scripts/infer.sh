#!/usr/bin/env bash
# Sample n responses per benchmark problem (resumable JSON lines). All arguments go to `python -m e3.main_infer`:
#   bash scripts/infer.sh MODEL_DIR --benchmark math500 aime24 amc23 olympiadbench --n 16 --temperature 1 \
#        --max-new-tokens 6144 --seed 0 --output results/run0.jsonl
#   bash scripts/infer.sh MODEL_DIR --data dataset/test.json --output results/run0.jsonl
# Then: python e3/main_eval.py --input results/run0.jsonl ; python e3/main_metric.py --input results/run*.scored.jsonl
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
export TOKENIZERS_PARALLELISM=false
exec python -m e3.main_infer "$@"

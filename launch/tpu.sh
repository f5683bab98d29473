#!/usr/bin/env bash
# Cloud TPU launcher; the logic is in tpu.py next to this file. Try: launch/tpu.sh --help
set -euo pipefail
exec python3 "$(dirname "${BASH_SOURCE[0]}")/tpu.py" "$@"

#!/usr/bin/env bash
# SLURM job writer; the logic is in slurm.py next to this file. Try: launch/slurm.sh --help
set -euo pipefail
exec python3 "$(dirname "${BASH_SOURCE[0]}")/slurm.py" "$@"

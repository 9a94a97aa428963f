#!/usr/bin/env bash
# The README's configuration table: one ahead-of-time compile check per paper configuration.
#
#   launch/compile_table.sh [JSON_DIR]      (default docs/compile_table; JOBS=2 runs two at once)
#
# Each row's report is written to JSON_DIR/<config>.<topology>.json by
# `python -m bbg_jax.compile_check --json`; rows whose JSON already exists are skipped, so the
# script resumes where it stopped (a full-size row takes about 20 CPU-minutes of one core on a
# workstation; XLA's TPU compile is single-threaded, so JOBS=<cores> runs rows side by side).
# Then it prints the markdown table rendered from the JSON files, in the order below: the
# README's table is that output, pasted (tests/test_compile_table.py checks they agree).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-docs/compile_table}
JOBS=${JOBS:-1}
mkdir -p "$OUT"

rows=$("$PY" -c 'from bbg_jax.compile_check import paper_rows
for config, topology in paper_rows(): print(config, topology)')

run_row() {  # config topology out_dir
  local json
  json="$3/$("$PY" -c 'import sys; from bbg_jax.compile_check import row_filename
print(row_filename(sys.argv[1], sys.argv[2]))' "$1" "$2")"
  [[ -f $json ]] && return 0
  echo "compiling $1 for $2 -> $json" >&2
  # Exit 2 (does not fit) still writes the report: the row shows memory above HBM.
  "$PY" -m bbg_jax.compile_check --config "$1" --topology "$2" --json "$json.tmp" \
    >"$json.log" 2>&1
  local rc=$?
  if [[ -f $json.tmp ]]; then mv "$json.tmp" "$json"; rm -f "$json.log"
  else echo "FAILED ($rc): $1 on $2, see $json.log" >&2; fi
}
export -f run_row
export PY
xargs -P "$JOBS" -L 1 bash -c 'run_row "$0" "$1" "'"$OUT"'"' <<<"$rows"

# The evaluation column: each new row's evaluation plan (bbg_jax.evaluation.plan).
"$PY" -m bbg_jax.evaluation.plan --compile_table="$OUT" >&2
"$PY" -c 'import sys; from bbg_jax.compile_check import render_table; print(render_table(sys.argv[1]))' "$OUT"

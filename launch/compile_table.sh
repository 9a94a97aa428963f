#!/usr/bin/env bash
# The README's configuration table: one compile check per paper configuration, each printing
# its own markdown row (needs libtpu; minutes per row on a workstation).
#
#   launch/compile_table.sh > table.md
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
rows=(
  "experiments/bigbigan_imagenet128.py v5p:2x4x4"
  "experiments/final_resnet50.py v5p:2x4x4"
  "experiments/final_revnet50x4.py v5p:4x4x4"
  "experiments/biggan_uncond_imagenet128.py v5p:2x4x4"
  "experiments/biggan_imagenet128.py v5p:2x4x4"
)
for v in $("$PY" -c 'import sys; sys.path.insert(0, "experiments"); import table1
print(" ".join(table1.VARIANTS))'); do
  rows+=("experiments/table1.py:$v v5p:2x4x4")
done
"$PY" -c 'from bbg_jax.compile_check import TABLE_HEADER; print(TABLE_HEADER)'
for row in "${rows[@]}"; do
  read -r config topology <<<"$row"
  out=$("$PY" -m bbg_jax.compile_check --config "$config" --topology "$topology" 2>/dev/null)
  rc=$?  # 2 = does not fit: the row still comes out, with memory above HBM
  row=$(sed -n '/^README row:/{n;p}' <<<"$out")
  echo "${row:-| \`$config\` | $topology | compile failed (exit $rc) | | | |}"
done

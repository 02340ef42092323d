#!/usr/bin/env bash
# A/B of two source trees of specdec on one machine: each tree is installed into its own folder
# (no editable install: the two must not see each other), then experiments/bench_e2e.py of each
# tree runs in alternating processes (A B A B ...), so drift of the machine hits both alike.
#
#   experiments/ab_trees.sh OLD_TREE NEW_TREE OUT_DIR ROUNDS -- <bench_e2e.py arguments>
#
# A tree is a checkout or an export of one commit (`git archive <sha> | tar -x -C old`; put the
# sha in old/GIT_SHA: the results name it where the tree's bench_e2e records $SPECDEC_GIT_SHA,
# i.e. from 2026-12-05 on). A tree
# without drafters/weights/ gets NEW_TREE's (the shipped heads are package data); the trees given
# are copied, never written. Writes OUT_DIR/{a,b}_<round>.json; experiments/ab_report.py turns
# them into a table of ratios. Pass `--hf` with no names: bench_e2e before 2026-12-05 timed HF
# `generate` (at ~30 tokens/s) when the flag was left out.
set -euo pipefail
[ $# -ge 5 ] && [ "$5" = "--" ] || { echo "usage: $0 OLD_TREE NEW_TREE OUT_DIR ROUNDS -- bench args" >&2; exit 2; }
old=$(realpath "$1") new=$(realpath "$2") out=$3 rounds=$4
shift 5
work=${AB_WORK:-/tmp/specdec_ab}
mkdir -p "$out" "$work"
for side in a b; do
  src=$([ $side = a ] && echo "$old" || echo "$new")
  rm -rf "$work/$side" && mkdir -p "$work/$side/run"
  # installed from a copy: pip's build/ and the borrowed weights stay out of the trees given
  mkdir -p "$work/$side/src"
  tar -C "$src" --exclude=./.git --exclude=./build --exclude='*.egg-info' --exclude=./.gguf --exclude=./.w \
    --exclude=./.ab --exclude=./.whl -cf - . | tar -C "$work/$side/src" -xf -
  if [ ! -d "$work/$side/src/drafters/weights" ] && [ -d "$new/drafters/weights" ]; then
    cp -r "$new/drafters/weights" "$work/$side/src/drafters/weights"
  fi
  python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target "$work/$side/site" "$work/$side/src"
  # the scripts and configs run from a folder with no package sources beside them, so that the
  # installed package is the one imported
  cp -r "$src/experiments" "$src/configs" "$work/$side/run/"
done
sha() {  # a tree's commit: its checkout's HEAD, or the GIT_SHA file of an export (git archive)
  git -C "$1" rev-parse HEAD 2>/dev/null || cat "$1/GIT_SHA" 2>/dev/null || echo unknown
}
for round in $(seq 1 "$rounds"); do
  for side in a b; do
    echo "== round $round, side $side"
    src=$([ $side = a ] && echo "$old" || echo "$new")
    SPECDEC_GIT_SHA=$(sha "$src") PYTHONPATH="$work/$side/site${PYTHONPATH:+:$PYTHONPATH}" \
      python3 "$work/$side/run/experiments/bench_e2e.py" "$@" --out "$out/${side}_${round}.json"
  done
done

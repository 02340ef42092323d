#!/usr/bin/env bash
# The GPU checks of an engine change, in stages that fit device calls of under 10 minutes on one
# warm machine (what a stage leaves in /tmp survives to the next call while the machine is warm):
#
#   deps      install the carried wheels (.whl) and specdec itself
#   model-a   keep the first half of the default model's GGUF (.gguf/a)
#   model-b   join the second half (.gguf/b), check it, convert it into the specdec cache
#   weights   put back the shipped drafter weights carried as .w/weights (the GGUF calls travel
#             without them: a call's working tree must stay under 64 MiB)
#   tests     the gpu-marked tests            -> $OUT/gpu_tests.log
#   ab        A/B of the commit in .ab/old against this tree (experiments/ab_trees.sh), B = 1 and
#             B = 16, drafters none, ngram_tree, eagle, eagle3, medusa -> $OUT/ab/
#   policy    speculation=fixed vs adaptive per drafter, B = 1 / 16 / 64, all at once and Poisson,
#             on MT-bench and the mix                                     -> $OUT/policy_*.json
#   host      the host timeline of a decode step at B = HOST_BATCHES (experiments/profile/step_host.py;
#             HOST_ARGS=--plain: every drafter at budget 1)              -> $OUT/step_host*_b<B>.json
#   exact     exact mode on the GPU: its step cost (SmolLM2, and the 8B shape's first 4 layers at
#             L = 4k) and greedy outputs equal to plain decoding's on 80 MT-bench prompts
#             (EXACT_DRAFTERS; EXACT_CONTROL= leaves out the runs without exact mode)
#                                                                         -> $OUT/exact_*.json
#
# Prepare here: experiments/gpu/wheels.sh (.whl), experiments/gpu/model.sh (.gguf/a, .gguf/b),
# `git archive <old sha> | tar -x -C .ab/old --exclude=drafters/weights` (.ab/old), and for the GGUF
# calls `mv drafters/weights .w/weights` (all four folders git-excluded), and `.git_sha` (below;
# add it to every call's carry). Then, back to back (the
# machine is given back 30 s after a call; times from the H100 session of 2026-12-05, whose first
# call also paid ~7 minutes of machine start):
#   1. carry [.whl, .gguf/a]  experiments/gpu/checks.sh deps model-a tests          (~2.5 min)
#   2. carry [.gguf/b, .w/weights/smollm2-135m-instruct/{eagle,medusa}] (what fits beside it)
#        POLICY_DRAFTERS="eagle medusa" POLICY_DATA=mix POLICY_PROMPTS=8 POLICY_RATES=0 POLICY_COLD=1 \
#        experiments/gpu/checks.sh model-b weights policy                            (~5.5 min)
#   3. carry [.w]  EXACT_DRAFTERS="eagle3 ngram_tree medusa" EXACT_CONTROL= EXACT_TIMEOUT=440 \
#        experiments/gpu/checks.sh weights exact                                     (~7 min)
#   4. carry [.w, .ab]  AB_ROUNDS=1 AB_DRAFTERS="none eagle3 medusa" experiments/gpu/checks.sh weights ab
#                                                                                    (~2.5 min)
#   Others: POLICY_DRAFTERS="eagle3 hybrid ngram_tree suffix" ... weights policy; ... weights ab host
set -euo pipefail
cd "$(dirname "$0")/../.."
STASH=${STASH:-/tmp/specdec_stash}
export SPECDEC_CACHE=${SPECDEC_CACHE:-/tmp/specdec_cache} PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30 WANDB_MODE=offline
mkdir -p "$STASH" "${OUT:-/tmp/out}"
OUT=${OUT:-/tmp/out}
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
# the commit the results name: the device copy's git metadata can be stale, so carry a .git_sha
# written here (`git rev-parse --short HEAD > .git_sha`, git-excluded) with every call
if [ -f .git_sha ]; then export SPECDEC_GIT_SHA=$(cat .git_sha); fi
for stage in "$@"; do
  case $stage in
    deps)
      if [ -d .whl ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
      fi
      python3 -m pip install -q --no-deps --no-build-isolation -e .
      nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
      python3 -c 'import sys, torch, triton, transformers; print(sys.version.split()[0], torch.__version__, triton.__version__, transformers.__version__)' ;;
    model-a)
      cp .gguf/a/part_aa "$STASH/" ;;
    model-b)
      dst="$SPECDEC_CACHE/smollm2-135m-instruct"
      mkdir -p "$dst"
      cat "$STASH/part_aa" .gguf/b/part_ab > "$dst/model.gguf"
      echo "$(cat .gguf/b/model.sha256)  $dst/model.gguf" | sha256sum -c
      python3 -c 'from specdec.models.assets import default_model_dir; print(default_model_dir())' ;;
    weights)
      if [ -d .w/weights ]; then rm -rf drafters/weights && cp -r .w/weights drafters/weights; fi ;;
    tests)
      n=$(python3 -c 'import xdist' 2>/dev/null && echo "-n 8" || echo "")
      timeout 480 python3 -m pytest -m gpu $n -q -p no:cacheprovider tests 2>&1 | tee "$OUT/gpu_tests.log" | tail -15 ;;
    ab)
      # AB_DRAFTERS picks the drafters (a call carries only their weights), AB_TAG the folder,
      # AB_ROUNDS the A B rounds
      timeout "${AB_TIMEOUT:-560}" experiments/ab_trees.sh .ab/old . "$OUT/${AB_TAG:-ab}" "${AB_ROUNDS:-2}" -- --num-prompts 10 \
        --max-new-tokens 256 --data "$PWD/specdec/prompts/mt_bench.jsonl" \
        --hf --drafters ${AB_DRAFTERS:-none ngram_tree eagle eagle3 medusa} --batch-sizes 16 --batch-prompts 48
      python3 experiments/ab_report.py "$OUT/${AB_TAG:-ab}" --json "$OUT/${AB_TAG:-ab}_table.json" ;;
    policy)
      # POLICY_DRAFTERS picks the drafters (a call carries only their weights), POLICY_TAG names
      # the output files, POLICY_PROMPTS the B = 1 prompts, POLICY_RATES the arrival rates; each
      # data set gets POLICY_TIMEOUT seconds, and the JSON is rewritten after every measurement,
      # so a run stopped by the limit keeps what it measured
      specs=(none)
      for d in ${POLICY_DRAFTERS:-ngram_tree suffix eagle3 medusa hybrid}; do
        specs+=("fixed-$d:$d speculation=fixed" "adaptive-$d:$d speculation=adaptive")
        # POLICY_COLD=1: adaptive also with neither start-up timing nor saved costs
        [ -n "${POLICY_COLD:-}" ] && specs+=("cold-$d:$d speculation=adaptive speculation.warm_up=false speculation.persist=false")
      done
      for data in ${POLICY_DATA:-mt_bench mix}; do
        timeout "${POLICY_TIMEOUT:-280}" python3 experiments/bench_e2e.py --num-prompts "${POLICY_PROMPTS:-16}" --round-robin \
          --max-new-tokens 256 --data "builtin:$data.jsonl" --hf --drafters "${specs[@]}" --batch-sizes 16 64 \
          --batch-prompts 64 --arrival-rates ${POLICY_RATES:-0 40} --out "$OUT/policy_${data}_${POLICY_TAG:-all}.json" | tail -32 || true
      done ;;
    host)
      # HOST_BATCHES: a timeline per batch size; HOST_ARGS: more step_host.py flags (--plain)
      for b in ${HOST_BATCHES:-1}; do
        python3 experiments/profile/step_host.py --drafters ${HOST_DRAFTERS:-none ngram_tree eagle3 medusa} \
          --batch "$b" --max-new-tokens "${HOST_TOKENS:-256}" ${HOST_ARGS:-} --out "$OUT/step_host${HOST_TAG:-}_b$b.json" | tail -18
      done ;;
    exact)
      python3 experiments/bench_exact_step.py --device cuda --prefix 300 --nodes 1 8 60 --out "$OUT/exact_step.json"
      python3 experiments/bench_exact_step.py --device cuda --shape llama3_8b --layers 4 --prefix 4000 \
        --nodes 1 8 60 --out "$OUT/exact_step_8b.json"
      timeout "${EXACT_TIMEOUT:-300}" python3 experiments/check_exact.py --num-prompts 80 --max-new-tokens 64 \
        --drafters ${EXACT_DRAFTERS:-eagle3 ngram_tree medusa} --batch-sizes 1 64 --temperatures 0 ${EXACT_CONTROL---control} \
        --out "$OUT/exact_check.json" | tail -12 || true ;;
    *)
      echo "unknown stage $stage (deps, model-a, model-b, weights, tests, ab, policy, host, exact)" >&2; exit 2 ;;
  esac
done

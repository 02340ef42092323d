#!/usr/bin/env bash
# Train the drafters shipped for the embedded default target (SmolLM2-135M-Instruct) on one H100,
# in device calls of under 10 minutes each. Every stage resumes where an interrupted call left it
# (data from its manifest, training from its checkpoint), as long as the machine stays warm; the
# results of each call are copied to $OUT.
#
# Prepare here, once (all git-excluded):
#   ../shared/tools/gpu-wheels.sh   -> .whl   (hydra, omegaconf, gguf, ...; WANDB=1 adds W&B, 20 MB)
#   ../shared/tools/gpu-model.sh    -> .gguf/a, .gguf/b (the default model's GGUF in two halves)
#   cp -r ../shared/data .data && echo /.data/ >> .git/info/exclude   (../shared does not travel)
# The shipped weights (drafters/weights/, ~45 MB) travel with every call as tracked files: move
# them out of the checkout for the calls that carry a GGUF half (`mv drafters/weights /tmp/w`),
# and back afterwards.
# Then one `run` call each, in this order, on one warm machine (held 30 minutes at most); a call's
# working tree must stay under 64 MiB, hence the split carries:
#   1. carry [.whl, .gguf/a]   experiments/train_smollm2.sh deps model-a
#   2. carry [.gguf/b, .data]  experiments/train_smollm2.sh model-b data       -> $OUT/data.tar
#   3. experiments/train_smollm2.sh eagle medusa   -> $OUT/eagle/, $OUT/medusa/
#   4. experiments/train_smollm2.sh eagle3 draft   -> $OUT/eagle3/, $OUT/draft/
#      (each: the *.safetensors weights, and meta.tar with config, README.md, summary.json, log)
# (with W&B: carry the WANDB=1 .whl in call 3 and run `deps eagle`).
# A stage cut by its time limit checkpoints; call it again to go on. Copy each $OUT/<kind>/ into
# drafters/weights/smollm2-135m-instruct/<kind>/ to ship it (`drafter.path=default` reads there).
# Data can also come back ($OUT/data.tar, tokens only) and be carried to a fresh machine.
#
# Sizes (measured on the H100: answering runs at ~19 prompts/s, EAGLE trains at ~14 steps/s):
# 2000 public prompts (GSM8K and Code Alpaca interleaved, the Alpaca seeds) + 4500 self-instruct
# asks, greedy answers of <= 256 tokens. A first round with 4000 public prompts and 300
# self-instruct gave heads that knew math and code (top-10 coverage 0.94 on 8 of their training
# answers) but not MT-bench's writing and roleplay (0.47-0.75 on 4 MT-bench answers): the
# self-instruct share is for breadth. EAGLE 3000 steps x 16 sequences with 2 unrolled steps,
# EAGLE-3 2000 x 16 with 5, Medusa 2000 x 8, draft 2000 x 16; training stops and checkpoints after
# TRAIN_LIMIT seconds whatever the step (two methods per call: TRAIN_LIMIT=200).
# Evaluation: the 80 MT-bench first turns, T = 0, 256 new tokens, against the target alone.
set -euo pipefail
cd "$(dirname "$0")/.."
STASH=${STASH:-/tmp/specdec_stash}         # survives between calls while the machine is warm
RUNS=${RUNS:-/tmp/specdec_runs}             # data, checkpoints, exports
export SPECDEC_CACHE=${SPECDEC_CACHE:-/tmp/specdec_cache}
export PYTHONUNBUFFERED=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false TQDM_MININTERVAL=20
TRAIN_LIMIT=${TRAIN_LIMIT:-330}             # seconds of training per call
for d in .data shared/data ../shared/data; do  # prompt sets: a carried copy, else the shared folder
  if [ -d "$d" ] && [ ! -d "$STASH/data" ]; then mkdir -p "$STASH" && cp -r "$d" "$STASH/data"; fi
done
PROMPTS=${PROMPTS:-$STASH/data/train} MT_BENCH=${MT_BENCH:-$STASH/data/mt_bench.jsonl}
DATA_PROMPTS=${DATA_PROMPTS:-2000} SELF_INSTRUCT=${SELF_INSTRUCT:-4500} NEW_TOKENS=${NEW_TOKENS:-256}
EVAL_PROMPTS=${EVAL_PROMPTS:-null} DEVICE=${DEVICE:-auto}  # EVAL_PROMPTS: null = all 80
DATA_SEQS=${DATA_SEQS:-256}                 # sequences answered at once in the data stage
STEPS=${STEPS:-} BATCH=${BATCH:-}              # set: every method uses these (smoke runs)
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
mkdir -p "$STASH" "$RUNS" ${OUT:+"$OUT"}

logger() { python3 -c 'import wandb' 2>/dev/null && echo "logger=wandb" || echo "logger=none"; }

train() {  # train() <method> [overrides...]: train, export, evaluate; results to $OUT/<method>
  local kind=$1; shift
  python3 -m specdec.train "train/method=$kind" "$(logger)" "work_dir=$RUNS/$kind" "data.dir=$RUNS/data" \
    "stages=[train,export,eval]" "data.prompts_dir=$PROMPTS" "eval.prompts_path=$MT_BENCH" \
    "train.time_limit_s=$TRAIN_LIMIT" train.save_every=250 engine.max_num_seqs=64 "engine.device=$DEVICE" \
    "eval.num_prompts=$EVAL_PROMPTS" "eval.max_new_tokens=$NEW_TOKENS" "$@" 2>&1 \
    | tee "$RUNS/$kind.log"
  if [ -n "${OUT:-}" ]; then
    # $OUT returns at most 8 files: weights as they are, everything else in one meta.tar
    mkdir -p "$OUT/$kind"
    cp "$RUNS/$kind"/export/*.safetensors "$OUT/$kind/"
    tar cf "$OUT/$kind/meta.tar" --exclude='*.safetensors' -C "$RUNS/$kind/export" . \
      -C "$RUNS/$kind" summary.json -C "$RUNS" "$kind.log"
  fi
}

for stage in "$@"; do
  case $stage in
    deps)
      if [ -d .whl ]; then  # idempotent: a later call may bring more wheels (W&B)
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
      fi
      python3 -m pip install -q --no-deps --no-build-isolation -e . ;;
    model-a)
      cp .gguf/a/part_aa "$STASH/" ;;
    model-b)
      dst="$SPECDEC_CACHE/smollm2-135m-instruct"
      mkdir -p "$dst"
      cat "$STASH/part_aa" .gguf/b/part_ab > "$dst/model.gguf"
      echo "$(cat .gguf/b/model.sha256)  $dst/model.gguf" | sha256sum -c
      python3 -c 'from specdec.assets import default_model_dir; print(default_model_dir())' ;;
    data)
      python3 -m specdec.train train/method=eagle logger=none "work_dir=$RUNS/data-run" "data.dir=$RUNS/data" \
        "stages=[data]" "data.prompts_dir=$PROMPTS" "data.max_prompts=$DATA_PROMPTS" "data.self_instruct=$SELF_INSTRUCT" \
        "data.max_new_tokens=$NEW_TOKENS" data.max_len=1024 data.shard_size=256 "engine.max_num_seqs=$DATA_SEQS" "engine.device=$DEVICE" 2>&1
      if [ -n "${OUT:-}" ]; then tar cf "$OUT/data.tar" -C "$RUNS" data; fi ;;
    eagle)
      train eagle "method.options.steps=${EAGLE_UNROLL:-2}" "train.steps=${STEPS:-3000}" "train.batch_size=${BATCH:-16}" train.max_len=768 train.lr=3e-4 ;;
    eagle3)
      train eagle3 "train.steps=${STEPS:-2000}" "train.batch_size=${BATCH:-16}" train.max_len=768 train.lr=3e-4 ;;
    medusa)
      train medusa "train.steps=${STEPS:-2000}" "train.batch_size=${BATCH:-8}" train.max_len=768 train.lr=1e-3 ;;
    draft)
      train draft "train.steps=${STEPS:-2000}" "train.batch_size=${BATCH:-16}" train.max_len=768 train.lr=3e-4 ;;
    *)
      echo "unknown stage $stage (deps, model-a, model-b, data, eagle, eagle3, medusa, draft)" >&2; exit 2 ;;
  esac
done

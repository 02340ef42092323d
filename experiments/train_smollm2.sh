#!/usr/bin/env bash
# Train the drafters shipped for the embedded default target (SmolLM2-135M-Instruct) on one GPU
# (H100 or H200), in device calls of under 10 minutes each. Every stage resumes where an interrupted call left it
# (data from its manifest, training from its checkpoint), as long as the machine stays warm; the
# results of each call are copied to $OUT.
#
# Prepare here, once (all git-excluded):
#   .whl     wheels of the dependencies the GPU machine lacks (hydra-core, omegaconf, gguf, ...;
#            W&B's add 20 MB), installed by the `deps` stage: experiments/gpu/wheels.sh
#   .gguf/a, .gguf/b   the default model's GGUF (specdec/models/assets.py) split in two halves
#            (.gguf/a/part_aa, .gguf/b/part_ab) with its sha256 in .gguf/b/model.sha256:
#            experiments/gpu/model.sh
#   .data    optional: train/ with the full GSM8K train and Code Alpaca files (sources in
#            specdec/prompts/README.md) under the names of specdec/prompts/train/, which ships
#            only the first 100 rows of each; without it the data stage uses the 375 shipped prompts
# The shipped weights (drafters/weights/, ~45 MB) travel with every call as tracked files: move
# them out of the checkout for the calls that carry a GGUF half (`mv drafters/weights /tmp/w`),
# and back afterwards.
# Then one `run` call each, in this order, on one warm machine (held 30 minutes at most); a call's
# working tree must stay under 64 MiB, hence the split carries:
#   1. carry [.whl, .gguf/a]   experiments/train_smollm2.sh deps model-a
#   2. carry [.gguf/b, .data]  DEADLINE=560 experiments/train_smollm2.sh model-b data eagles
#        -> $OUT/data.tar.gz, $OUT/eagle/, $OUT/eagle3/
#   3. experiments/train_smollm2.sh medusa draft   -> $OUT/medusa/, $OUT/draft/
#      (each: the *.safetensors weights, and meta.tar with config, README.md, summary.json, log)
# (with W&B: carry the WANDB=1 .whl in call 2 and run `deps` first).
# A round longer than one machine's 30 minutes goes on from its checkpoint on the next machine
# (optimizer and schedule state included; files of at most 15 MB, train.checkpoint_mb): after
# the last training call, `CKPT=eagle3 experiments/train_smollm2.sh ckpt-out` returns up to 8 of
# its files per call (call again for the rest; copy them into .ckpt/eagle3/ here); on the next
# machine, `ckpt-in` with .ckpt carried (64 MiB a call: several calls if need be) puts them back,
# then `eagle3` resumes (same data: carry it back too, data.tar.gz).
# DEADLINE (seconds from the script's start) bounds a call: the data stage stops at DATA_TIME
# (training then uses the shards written so far: the prompt list is shuffled, so they mix every
# source) and each training gets what is left before DEADLINE minus EVAL_S for export and
# evaluation, its learning-rate schedule fitted to that time (train.fit_to_time). `eagles` trains
# EAGLE-2 and EAGLE-3 side by side on the one GPU. A stage cut by its time limit checkpoints;
# call it again to go on. Copy each $OUT/<kind>/ into drafters/weights/smollm2-135m-instruct/<kind>/
# to ship it (`drafter.path=default` reads there). Data can also come back ($OUT/data.tar.gz,
# tokens only) and be carried to a fresh machine (untar it into $RUNS).
#
# Sizes: 3000 public prompts (GSM8K and Code Alpaca interleaved, the Alpaca seeds) + 4500
# self-instruct asks + 10000 Magpie samples (user turns the target writes from its own chat
# template) + 3000 copy-heavy tasks over the public text (summarize, extract, translate, passage QA,
# documents, rewrite, code), greedy answers of <= 256 tokens; 4000 of the conversations go on for a
# second turn (a template's follow-up or one the target writes, alternately). The first rounds (2026-11-24) had no Magpie prompts;
# a round with 4000 public prompts and 300 self-instruct gave heads that knew math and code (top-10
# coverage 0.94 on 8 of their training answers) but not MT-bench's writing and roleplay (0.47-0.75
# on 4 MT-bench answers): the self-instruct and Magpie shares are for breadth. EAGLE with 2
# unrolled steps, EAGLE-3 with 5, Medusa 2000 x 8, draft 2000 x 16 (TRAIN_LIMIT without DEADLINE).
# Evaluation: the 80 MT-bench first turns, T = 0, 256 new tokens, against the target alone.
set -euo pipefail
cd "$(dirname "$0")/.."
STASH=${STASH:-/tmp/specdec_stash}         # survives between calls while the machine is warm
RUNS=${RUNS:-/tmp/specdec_runs}             # data, checkpoints, exports
export SPECDEC_CACHE=${SPECDEC_CACHE:-/tmp/specdec_cache}
export PYTHONUNBUFFERED=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false TQDM_MININTERVAL=20
TRAIN_LIMIT=${TRAIN_LIMIT:-330}             # seconds of training per call
if [ -d .data ] && [ ! -d "$STASH/data" ]; then mkdir -p "$STASH" && cp -r .data "$STASH/data"; fi  # carried once
FULL_SETS=builtin:train; [ -d "$STASH/data/train" ] && FULL_SETS=$STASH/data/train
PROMPTS=${PROMPTS:-$FULL_SETS} MT_BENCH=${MT_BENCH:-builtin:mt_bench.jsonl}
DATA_PROMPTS=${DATA_PROMPTS:-3000} SELF_INSTRUCT=${SELF_INSTRUCT:-4500} MAGPIE=${MAGPIE:-10000}
COPY_TASKS=${COPY_TASKS:-3000} FOLLOW_UPS=${FOLLOW_UPS:-4000}  # copy-heavy prompts; conversations given a second turn
NEW_TOKENS=${NEW_TOKENS:-256} DATA_TIME=${DATA_TIME:-0}  # DATA_TIME: seconds the data stage may run (0: no limit)
DEADLINE=${DEADLINE:-} EVAL_S=${EVAL_S:-120}  # DEADLINE set: training time = DEADLINE - elapsed - EVAL_S
EVAL_PROMPTS=${EVAL_PROMPTS:-null} DEVICE=${DEVICE:-auto}  # EVAL_PROMPTS: null = all 80
DATA_SEQS=${DATA_SEQS:-256}                 # sequences answered at once in the data stage (all graphed)
STEPS=${STEPS:-} BATCH=${BATCH:-}              # set: every method uses these (smoke runs)
EAGLE_INIT=${EAGLE_INIT:-} EAGLE3_INIT=${EAGLE3_INIT:-}  # set (a head's directory, or default): train it further
STAGES=${STAGES:-train,export,eval}        # of each training; train,export leaves evaluation to a later call
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
mkdir -p "$STASH" "$RUNS" ${OUT:+"$OUT"}

logger() { python3 -c 'import wandb' 2>/dev/null && echo "logger=wandb" || echo "logger=none"; }

limit() {  # seconds of training for a stage starting now
  if [ -n "$DEADLINE" ]; then echo $(( DEADLINE - SECONDS - EVAL_S > 30 ? DEADLINE - SECONDS - EVAL_S : 30 )); else echo "$TRAIN_LIMIT"; fi
}

train() {  # train() <method> [overrides...]: train, export, evaluate; results to $OUT/<method>
  local kind=$1 rc=0; shift
  python3 -m specdec.train "train/method=$kind" "$(logger)" "work_dir=$RUNS/$kind" "data.dir=$RUNS/data" \
    "stages=[$STAGES]" "data.prompts_dir=$PROMPTS" "eval.prompts_path=$MT_BENCH" \
    "train.time_limit_s=$(limit)" train.fit_to_time=true train.save_every=250 train.checkpoint_mb=15 engine.max_num_seqs=64 \
    "engine.device=$DEVICE" "eval.num_prompts=$EVAL_PROMPTS" "eval.max_new_tokens=$NEW_TOKENS" "$@" > "$RUNS/$kind.log" 2>&1 || rc=$?
  tail -n 5 "$RUNS/$kind.log"
  if [ -n "${OUT:-}" ] && [ "$rc" = 0 ]; then
    # $OUT returns at most 8 files: weights as they are, everything else in one meta.tar
    mkdir -p "$OUT/$kind"
    cp "$RUNS/$kind"/export/*.safetensors "$OUT/$kind/"
    tar cf "$OUT/$kind/meta.tar" --exclude='*.safetensors' -C "$RUNS/$kind/export" . \
      -C "$RUNS/$kind" summary.json -C "$RUNS" "$kind.log"
  fi
  return "$rc"
}

eagle() { train eagle "method.options.steps=${EAGLE_UNROLL:-2}" "train.steps=${STEPS:-20000}" "train.batch_size=${BATCH:-16}" \
  train.max_len=768 train.lr=3e-4 ${EAGLE_INIT:+"method.options.init_from=$EAGLE_INIT"}; }
eagle3() { train eagle3 "train.steps=${STEPS:-20000}" "train.batch_size=${BATCH:-16}" train.max_len=768 train.lr=3e-4 \
  ${EAGLE3_INIT:+"method.options.init_from=$EAGLE3_INIT"}; }

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
      python3 -c 'from specdec.models.assets import default_model_dir; print(default_model_dir())' ;;
    data)
      rc=0
      timeout -s TERM "$DATA_TIME" python3 -m specdec.train train/method=eagle logger=none "work_dir=$RUNS/data-run" "data.dir=$RUNS/data" \
        "stages=[data]" "data.prompts_dir=$PROMPTS" "data.max_prompts=$DATA_PROMPTS" "data.self_instruct=$SELF_INSTRUCT" \
        "data.magpie=$MAGPIE" "data.copy_tasks=$COPY_TASKS" "data.follow_ups=$FOLLOW_UPS" "data.max_new_tokens=$NEW_TOKENS" data.max_len=1024 data.shard_size=256 \
        "engine.max_num_seqs=$DATA_SEQS" "engine.max_graph_batch=$DATA_SEQS" engine.prefill_graphs=false \
        "engine.device=$DEVICE" 2>&1 || rc=$?
      if [ "$rc" = 124 ]; then echo "data stage stopped at DATA_TIME=${DATA_TIME}s: training uses the shards written"
      elif [ "$rc" != 0 ]; then exit "$rc"; fi
      python3 -c 'import json, sys; m = json.load(open(sys.argv[1])); print("data:", m["prompts_done"], "prompts,", sum(s["tokens"] for s in m["shards"]), "tokens")' "$RUNS/data/manifest.json"
      if [ -n "${OUT:-}" ]; then tar czf "$OUT/data.tar.gz" -C "$RUNS" data; fi ;;
    eagles)  # EAGLE-2 and EAGLE-3 side by side: one small head's training leaves most of the GPU idle
      eagle & e2=$!
      eagle3 & e3=$!
      rc=0; wait "$e2" || rc=$?; wait "$e3" || rc=$?
      [ "$rc" = 0 ] || exit "$rc" ;;
    eagle)
      eagle ;;
    eagle3)
      eagle3 ;;
    medusa)
      train medusa "train.steps=${STEPS:-2000}" "train.batch_size=${BATCH:-8}" train.max_len=768 train.lr=1e-3 ;;
    draft)
      train draft "train.steps=${STEPS:-2000}" "train.batch_size=${BATCH:-16}" train.max_len=768 train.lr=3e-4 ;;
    ckpt-out)  # CKPT=<kind>: its checkpoint's files to $OUT/ckpt-<kind>/, 8 a call (call again for the rest)
      src="$RUNS/$CKPT/checkpoint" sent="$STASH/ckpt-sent-$CKPT" n=0
      touch "$sent" && mkdir -p "$OUT/ckpt-$CKPT"
      for f in "$src"/*; do
        grep -qxF "$(basename "$f")" "$sent" && continue
        [ "$n" -lt 8 ] || break
        cp "$f" "$OUT/ckpt-$CKPT/" && basename "$f" >> "$sent" && n=$((n + 1))
      done
      echo "ckpt-out: $n files of $CKPT's checkpoint; $(ls "$src" | grep -cvxFf "$sent" || true) left" ;;
    ckpt-in)  # the pieces carried as .ckpt/<kind>/ into <kind>'s checkpoint (a call at a time)
      for d in .ckpt/*/; do
        k=$(basename "$d") && mkdir -p "$RUNS/$k/checkpoint" && cp "$d"* "$RUNS/$k/checkpoint/"
        echo "ckpt-in: $k has $(ls "$RUNS/$k/checkpoint" | wc -l) files"
      done ;;
    *)
      echo "unknown stage $stage (deps, model-a, model-b, data, eagle, eagle3, eagles, medusa, draft, ckpt-out, ckpt-in)" >&2; exit 2 ;;
  esac
done

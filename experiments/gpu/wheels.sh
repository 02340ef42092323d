#!/usr/bin/env bash
# Build .whl/ (git-excluded) in the project root: Python 3.12 wheels of the packages that the GPU
# machine's image lacks (it has torch, triton, transformers, accelerate, scipy, pytest, numpy,
# pyarrow; not hydra, omegaconf, datasets, gguf, wandb). Usage: [WANDB=1] experiments/gpu/wheels.sh [name==pin...]
# Prints the line that installs them there.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
plat=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
# pure-Python or binary wheels, no dependencies pulled (the GPU image has the rest)
python3 -m pip download -q --no-deps --only-binary=:all: "${plat[@]}" -d .whl \
  hydra-core==1.3.2 'omegaconf==2.3.0' gguf==0.19.0 datasets==5.2.0 dill multiprocess "${@}"
# wandb and its needs add 20 MB: only with WANDB=1
if [ "${WANDB:-0}" = 1 ]; then
  python3 -m pip download -q --no-deps --only-binary=:all: "${plat[@]}" -d .whl \
    wandb==0.31.0 sentry-sdk gitpython gitdb smmap platformdirs pydantic pydantic-core \
    annotated-types typing-inspection
fi
# antlr4 4.9.3 (hydra's pin) is published as a source archive only: build its wheel here
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
du -sh .whl
echo 'Install there with:'
echo 'python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH || exit 1;'

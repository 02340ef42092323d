"""Prompt sets: the built-in default prompts, the sets shipped in specdec/prompts/ (``builtin:<file>``:
MT-bench, a small training prompt set), local files (jsonl / json read here, parquet / csv with
`datasets`) and HF hub data sets by name (MT-bench, Spec-Bench's question format, GSM8K, HumanEval,
any set with a chosen prompt field). Errors name the file and every bad line, not only the first.
Multi-turn sets keep all their user turns; `render` puts earlier answers into the chat."""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

# MT-bench's 8 categories, and Spec-Bench's 13 (MT-bench's plus 5 tasks; Xia et al. 2024,
# github.com/hemingkx/Spec-Bench). The Spec-Bench leaderboard groups MT-bench's as one column.
MT_BENCH_CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem",
                       "humanities")
SPEC_BENCH_CATEGORIES = MT_BENCH_CATEGORIES + ("translation", "summarization", "qa",
                                               "math_reasoning", "rag")

# A handful of short, varied instructions written for this project (the default `data=default`).
DEFAULT_PROMPTS = [
    "What is the capital of France? Answer in one sentence.",
    "Write a Python function that returns the n-th Fibonacci number.",
    "Explain in two sentences why the sky is blue.",
    "List three tips for writing clear technical documentation.",
    "Translate 'Good morning, how are you?' into Spanish.",
    "Summarize the plot of Romeo and Juliet in three sentences.",
    "What is 17 multiplied by 23? Show your working.",
    "Give me a haiku about autumn leaves.",
]


@dataclass
class Prompt:
    id: str
    turns: list[str]  # user turns; the first is what single-turn runs use
    category: str = ""
    meta: dict = field(default_factory=dict)


class DataError(ValueError):
    """A prompt file that cannot be used; the message names the file and the bad lines."""


# ---- the prompt sets shipped in the package (specdec/prompts/README.md: sources, licenses) ------
BUILTIN = "builtin:"
BUILTIN_DIR = Path(__file__).resolve().parent / "prompts"


def builtin_files() -> list[str]:
    """Names ``builtin:`` accepts: every data file and folder under specdec/prompts/."""
    return sorted(str(p.relative_to(BUILTIN_DIR)) for p in BUILTIN_DIR.rglob("*")
                  if p.name != "README.md" and not p.name.startswith((".", "__")))


def builtin_path(name: str) -> Path:
    """specdec/prompts/<name> (``name`` with or without the ``builtin:`` prefix), found wherever
    the package is installed, from any working directory."""
    name = name[len(BUILTIN):] if name.startswith(BUILTIN) else name
    path = BUILTIN_DIR / name
    if not name or ".." in Path(name).parts or not path.exists():
        raise DataError(f"{BUILTIN}{name}: no such prompt set shipped with specdec; shipped: "
                        f"{', '.join(BUILTIN + f for f in builtin_files())}")
    return path


def resolve_path(path: str | Path) -> Path:
    """A prompt file or folder path: ``builtin:<name>`` is looked up in the package, anything else
    is taken as given (relative paths from the working directory)."""
    return builtin_path(path) if str(path).startswith(BUILTIN) else Path(path).expanduser()


def default_prompts() -> list[Prompt]:
    return [Prompt(f"default-{i}", [t], "default") for i, t in enumerate(DEFAULT_PROMPTS)]


def read_records(path: str | Path) -> tuple[list[tuple[int, dict]], list[tuple[int, str]]]:
    """(line number, record) pairs from a .jsonl file (one object per line) or a .json list, and
    (line number, message) for every line that is not valid JSON."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompt file {path} does not exist (set data.path to a jsonl/json file)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: a .json prompt file must hold a list of objects")
        return [(i + 1, rec) for i, rec in enumerate(data)], []
    records, errors = [], []
    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            errors.append((no, f"{path}:{no}: invalid JSON: {err.msg}"))
            continue
        records.append((no, rec))
    return records, errors


# ---- local files and hub data sets ---------------------------------------------------------
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def is_local(path: str) -> bool:
    """A shipped set (``builtin:``) or a local file (existing, or named with a data-file suffix or
    a relative/absolute prefix); anything else (``openai/gsm8k``) is taken as an HF hub name."""
    p = Path(path).expanduser()
    return (str(path).startswith((BUILTIN, ".", "/", "~")) or p.exists()
            or p.suffix in FILE_BUILDERS)


def _line_numbers(path: Path, count: int) -> list[int]:
    """The file line of each row `datasets` returns: header-less rows of a .csv, row positions
    of a .parquet."""
    return [i + (2 if path.suffix == ".csv" else 1) for i in range(count)]


def local_records(path: str | Path) -> tuple[list[tuple[int, dict]], list[tuple[int, str]]]:
    """(line, record) pairs of a local file, and (line, message) for every line that is not valid
    JSON. jsonl/json are read here (every bad line reported, nothing cached); parquet/csv with
    ``datasets.load_dataset(<builder>, data_files=path)``."""
    path = resolve_path(path)
    if not path.is_file():
        raise DataError(f"prompt file {path} does not exist (set data.path to a jsonl/json file, "
                        f"a shipped set such as {BUILTIN}mt_bench.jsonl, or an HF hub data set name)")
    if path.suffix not in FILE_BUILDERS:
        raise DataError(f"{path}: unknown prompt file type {path.suffix!r}; use one of "
                        f"{sorted(FILE_BUILDERS)}")
    if path.suffix in (".jsonl", ".json"):
        return read_records(path)
    import datasets

    datasets.disable_progress_bars()
    try:
        with _datasets_quiet():  # its builders log each parse error before raising it
            rows = datasets.load_dataset(FILE_BUILDERS[path.suffix], data_files=str(path),
                                         split="train").to_list()
    except Exception as err:  # noqa: BLE001 - pyarrow's parse errors have many types
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(f"{path}: not a readable {path.suffix[1:]} file ({first})") from None
    return list(zip(_line_numbers(path, len(rows)), rows)), []


@contextmanager
def _datasets_quiet():
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def hub_records(name: str, subset: Optional[str], split: str) -> list[tuple[int, dict]]:
    """(row number, record) pairs of an HF hub data set; a clear error when it cannot be had."""
    import datasets

    datasets.disable_progress_bars()
    try:
        rows = datasets.load_dataset(name, subset, split=split).to_list()
    except (ConnectionError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"could not load the data set {name!r} (subset {subset}, split {split}) "
                        f"from the HF hub: {first}. Offline? Load it once with a network (it is "
                        f"then cached), or set data.path to a local jsonl/json file") from None
    except ValueError as err:  # unknown split / subset
        raise DataError(f"data set {name!r}: {err}") from None
    return [(i + 1, row) for i, row in enumerate(rows)]


def load_prompt_file(path: str | Path, field_name: str = "turns", id_field: Optional[str] = None,
                     category_field: Optional[str] = "category", default_category: str = "",
                     template: Optional[str] = None) -> list[Prompt]:
    """Prompts from a local file whose ``field_name`` holds a string or a list of turns
    (MT-bench and Spec-Bench: ``turns``). Every record without a usable prompt is reported at
    once, with its file and line."""
    records, errors = local_records(path)
    return to_prompts(records, errors, str(path), field_name, id_field, category_field,
                      default_category, template)


def load_prompts(path: str, field_name: str = "turns", split: str = "train",
                 subset: Optional[str] = None, id_field: Optional[str] = None,
                 category_field: Optional[str] = "category", default_category: str = "",
                 template: Optional[str] = None,
                 categories: Optional[Sequence[str]] = None) -> list[Prompt]:
    """Prompts from a local file or an HF hub data set (``path`` = its name, with ``subset`` and
    ``split``). ``template`` (a format string with ``{prompt}``) wraps every user turn;
    ``categories`` keeps only those categories (e.g. Spec-Bench's ``[translation, rag]``)."""
    if template is not None and "{prompt}" not in template:
        raise DataError(f"data.template must contain '{{prompt}}' (where each turn goes); got {template!r}")
    if is_local(path):
        prompts = load_prompt_file(path, field_name, id_field, category_field, default_category, template)
    else:
        prompts = to_prompts(hub_records(path, subset, split), [], f"{path}[{split}]", field_name,
                             id_field, category_field, default_category, template)
    return filter_categories(prompts, categories, path)


def filter_categories(prompts: list[Prompt], categories: Optional[Sequence[str]], where: str) -> list[Prompt]:
    if not categories:
        return prompts
    keep = [p for p in prompts if p.category in set(categories)]
    if not keep:
        raise DataError(f"{where}: no prompt in categories {list(categories)} (its categories: "
                        f"{sorted({p.category for p in prompts})})")
    return keep


def to_prompts(records: list[tuple[int, dict]], errors: list[tuple[int, str]], where: str,
               field_name: str, id_field: Optional[str], category_field: Optional[str],
               default_category: str = "", template: Optional[str] = None) -> list[Prompt]:
    """Validate records (a missing / null / empty prompt field is an error naming the source,
    the line and the field) and build Prompts; raises one DataError listing every bad line."""
    prompts, errors = [], list(errors)
    for no, rec in records:
        prompt = _record_prompt(rec, f"{where}:{no}", no, field_name, id_field, category_field,
                                default_category, template)
        if isinstance(prompt, str):
            errors.append((no, prompt))
        else:
            prompts.append(prompt)
    if errors:
        lines = [msg for _, msg in sorted(errors)]
        raise DataError(f"{len(errors)} bad record(s) in {where}:\n" + "\n".join(lines))
    if not prompts:
        raise DataError(f"{where} holds no prompts")
    return prompts


def _record_prompt(rec, where: str, no: int, field_name: str, id_field: Optional[str],
                   category_field: Optional[str], default_category: str,
                   template: Optional[str]) -> Prompt | str:
    """A Prompt, or the error message for this record."""
    if not isinstance(rec, dict):
        return f"{where}: expected a JSON object, got {type(rec).__name__}"
    if rec.get(field_name) is None:
        fields = sorted(k for k, v in rec.items() if v is not None)
        return (f"{where}: no field {field_name!r} (fields: {fields}); set the data config's "
                f"field_name to the prompt field")
    turns = rec[field_name]
    turns = [turns] if isinstance(turns, str) else turns
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
        return f"{where}: field {field_name!r} must be a non-empty string or list of strings"
    if template:
        turns = [template.format(prompt=t) for t in turns]
    key = id_field or "question_id"
    pid = str(rec[key]) if rec.get(key) is not None else str(no)
    cat = rec.get(category_field) if category_field else None
    return Prompt(pid, list(turns), str(cat) if cat is not None else default_category)


def round_robin(prompts: list[Prompt]) -> list[Prompt]:
    """The prompts reordered category by category in turn (the first of each category in order of
    first appearance, then the second of each ...), so that the first N of a mixed set cover its
    categories instead of being its first category."""
    groups: dict[str, list[Prompt]] = {}
    for p in prompts:
        groups.setdefault(p.category, []).append(p)
    longest = max((len(g) for g in groups.values()), default=0)
    return [g[i] for i in range(longest) for g in groups.values() if i < len(g)]


def select(prompts: list[Prompt], num_prompts: Optional[int],
           per_category: Optional[int] = None) -> list[Prompt]:
    """The first ``per_category`` prompts of each category (in file order; a small subset that
    still covers every category), then the first ``num_prompts`` of those."""
    for name, value in (("data.per_category", per_category), ("data.num_prompts", num_prompts)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise DataError(f"{name} must be an integer >= 1 or null; got {value!r}")
    if per_category is not None:
        if per_category < 1:
            raise DataError(f"data.per_category must be >= 1 or null; got {per_category}")
        seen: dict[str, int] = {}
        kept = []
        for p in prompts:
            seen[p.category] = seen.get(p.category, 0) + 1
            if seen[p.category] <= per_category:
                kept.append(p)
        prompts = kept
    if num_prompts is None:
        return prompts
    if num_prompts < 1:
        raise DataError(f"data.num_prompts must be >= 1 or null; got {num_prompts}")
    return prompts[:num_prompts]


def render(prompt: Prompt, tokenizer, chat_template: bool = True, turn: int = 0,
           system: Optional[str] = None, answers: Optional[Sequence[str]] = None) -> list[int]:
    """Token ids of the prompt's first ``turn + 1`` user turns, with the model's earlier answers
    (``answers``, else ``prompt.meta['answers']``) between them: MT-bench's second turn is asked
    after the model's own first answer. Rendered with the model's chat template when it has one
    and ``chat_template`` is true, else as plain text."""
    if not 0 <= turn < len(prompt.turns):
        raise DataError(f"prompt {prompt.id} has {len(prompt.turns)} turn(s); turn {turn} asked")
    answers = list(answers if answers is not None else prompt.meta.get("answers", []))
    if not chat_template or getattr(tokenizer, "chat_template", None) is None:
        parts = [x for i in range(turn) for x in (prompt.turns[i], answers[i] if i < len(answers) else "")]
        return tokenizer.encode("\n\n".join(parts + [prompt.turns[turn]]), add_special_tokens=True)
    messages = [{"role": "system", "content": system}] if system else []
    for i in range(turn + 1):
        messages.append({"role": "user", "content": prompt.turns[i]})
        if i < turn:
            messages.append({"role": "assistant", "content": answers[i] if i < len(answers) else ""})
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)

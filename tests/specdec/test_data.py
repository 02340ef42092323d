import json
import os
import re
import subprocess
import sys

import pytest

from specdec.data import (BUILTIN_DIR, MT_BENCH_CATEGORIES, SPEC_BENCH_CATEGORIES, DataError, Prompt,
                          builtin_path, default_prompts, load_prompt_file, load_prompts, render, select)


def write(tmp_path, name, text, mode="w"):
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return p


def test_default_prompts_are_nonempty():
    prompts = default_prompts()
    assert len(prompts) >= 4 and all(p.turns[0].strip() for p in prompts)


def test_mt_bench_format(tmp_path):
    rows = [{"question_id": 81, "category": "writing", "turns": ["a", "b"]},
            {"question_id": 82, "category": "math", "turns": ["c", "d"]}]
    p = write(tmp_path, "q.jsonl", "\n".join(json.dumps(r) for r in rows))
    prompts = load_prompt_file(p)
    assert [(x.id, x.category, x.turns) for x in prompts] == [("81", "writing", ["a", "b"]),
                                                              ("82", "math", ["c", "d"])]
    assert len(select(prompts, 1)) == 1


def test_shipped_mt_bench():
    prompts = load_prompt_file("builtin:mt_bench.jsonl")
    assert len(prompts) == 80 and all(len(p.turns) == 2 for p in prompts)
    assert prompts[0].id == "81" and prompts[0].turns[0].startswith("Compose an engaging travel blog post")


def test_missing_file_names_it(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl does not exist"):
        load_prompt_file(tmp_path / "nope.jsonl")


def test_all_bad_lines_are_reported(tmp_path):
    lines = ['{"turns": ["ok"]}', '{"prompt": "x"}', "not json", '{"turns": [""]}', '{"turns": ["fine"]}']
    p = write(tmp_path, "bad.jsonl", "\n".join(lines))
    with pytest.raises(DataError) as err:
        load_prompt_file(p)
    msg = str(err.value)
    assert f"{p}:2: no field 'turns'" in msg
    assert f"{p}:3: invalid JSON" in msg
    assert f"{p}:4: field 'turns' must be a non-empty" in msg
    assert ":1:" not in msg and ":5:" not in msg


def test_wrong_field_name_is_named(tmp_path):
    p = write(tmp_path, "x.jsonl", '{"question": "hi"}\n')
    with pytest.raises(DataError, match="no field 'turns'.*fields: \\['question'\\]"):
        load_prompt_file(p)
    assert load_prompt_file(p, field_name="question")[0].turns == ["hi"]


def test_non_utf8_names_file_and_line(tmp_path):
    p = write(tmp_path, "b.jsonl", b'{"turns": ["ok"]}\n{"turns": ["\xff"]}\n')
    with pytest.raises(DataError, match="b.jsonl:2: not valid UTF-8"):
        load_prompt_file(p)


def test_json_list_file(tmp_path):
    p = write(tmp_path, "x.json", json.dumps([{"instruction": "do it"}]))
    assert load_prompt_file(p, field_name="instruction")[0].turns == ["do it"]


def test_num_prompts_must_be_positive():
    with pytest.raises(DataError, match="num_prompts"):
        select(default_prompts(), 0)


# ---- loaders through `datasets`: each format with small files the tests write ------------------
def jsonl(tmp_path, name, rows, blank_after=None):
    lines = [json.dumps(r) for r in rows]
    if blank_after is not None:
        lines.insert(blank_after, "")
    return write(tmp_path, name, "\n".join(lines) + "\n")


def test_spec_bench_format_all_categories_and_a_filter(tmp_path):
    rows = [{"question_id": i, "category": c, "turns": [f"q{i}"] + ([f"q{i} again"] if c in MT_BENCH_CATEGORIES else [])}
            for i, c in enumerate(SPEC_BENCH_CATEGORIES)]
    p = jsonl(tmp_path, "question.jsonl", rows)
    prompts = load_prompts(str(p))
    assert [x.category for x in prompts] == list(SPEC_BENCH_CATEGORIES) and len(prompts) == 13
    assert [len(x.turns) for x in prompts] == [2] * 8 + [1] * 5  # MT-bench's are multi-turn
    picked = load_prompts(str(p), categories=["translation", "rag"])
    assert [(x.id, x.category) for x in picked] == [("8", "translation"), ("12", "rag")]
    with pytest.raises(DataError, match="no prompt in categories \\['poetry'\\]"):
        load_prompts(str(p), categories=["poetry"])


def test_gsm8k_format(tmp_path):
    p = jsonl(tmp_path, "gsm8k.jsonl", [{"question": "2+2?", "answer": "4"}, {"question": "3*3?", "answer": "9"}])
    prompts = load_prompts(str(p), field_name="question", default_category="gsm8k",
                           template="{prompt}\nThink step by step.")
    assert [(x.id, x.category, x.turns) for x in prompts] == [
        ("1", "gsm8k", ["2+2?\nThink step by step."]), ("2", "gsm8k", ["3*3?\nThink step by step."])]
    with pytest.raises(DataError, match="must contain '\\{prompt\\}'"):
        load_prompts(str(p), field_name="question", template="no slot")


def test_humaneval_format(tmp_path):
    rows = [{"task_id": "HumanEval/0", "prompt": "def f(x):\n    ", "entry_point": "f"}]
    p = jsonl(tmp_path, "HumanEval.jsonl", rows)
    prompts = load_prompts(str(p), field_name="prompt", id_field="task_id", default_category="humaneval")
    assert [(x.id, x.category, x.turns) for x in prompts] == [("HumanEval/0", "humaneval", ["def f(x):\n    "])]


def test_blank_lines_keep_line_numbers_in_errors(tmp_path):
    p = jsonl(tmp_path, "gap.jsonl", [{"turns": ["ok"]}, {"turns": ["ok"]}, {"question": "x"}], blank_after=1)
    with pytest.raises(DataError, match=f"{p}:4: no field 'turns'") as err:  # line 4: after the blank
        load_prompts(str(p))
    assert ":1:" not in str(err.value) and ":3:" not in str(err.value)


def test_null_and_missing_fields_both_named(tmp_path):
    p = jsonl(tmp_path, "n.jsonl", [{"prompt": "a"}, {"prompt": None}, {"other": "b"}])
    with pytest.raises(DataError) as err:
        load_prompts(str(p), field_name="prompt")
    msg = str(err.value)
    assert "2 bad record(s)" in msg and f"{p}:2: no field 'prompt'" in msg and f"{p}:3: no field 'prompt'" in msg


def test_parquet_and_csv_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"instruction": ["a", "b"], "category": ["x", "y"]}), tmp_path / "p.parquet")
    assert [(x.id, x.category, x.turns) for x in load_prompts(str(tmp_path / "p.parquet"), field_name="instruction")] \
        == [("1", "x", ["a"]), ("2", "y", ["b"])]
    write(tmp_path, "c.csv", "instruction,category\nhello,z\n")
    assert [(x.id, x.turns) for x in load_prompts(str(tmp_path / "c.csv"), field_name="instruction")] == [("2", ["hello"])]


def test_missing_local_file_with_a_directory_in_its_name(tmp_path):
    with pytest.raises(DataError, match="missing/q.jsonl does not exist"):
        load_prompts(str(tmp_path / "missing" / "q.jsonl"))


def test_hub_name_offline_fails_with_a_clear_message():
    """A hub data set without a network: one DataError saying what to do (no traceback chain)."""
    code = ("from specdec.data import load_prompts\n"
            "load_prompts('openai/gsm8k', subset='main', split='test', field_name='question')")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "DataError: could not load the data set 'openai/gsm8k' (subset main, split test)" in proc.stderr
    assert "set data.path to a local jsonl/json file" in proc.stderr


def test_per_category_subset():
    prompts = [Prompt(str(i), ["x"], c) for i, c in enumerate("aabbbc")]
    assert [p.id for p in select(prompts, None, per_category=1)] == ["0", "2", "5"]
    assert [p.id for p in select(prompts, 2, per_category=2)] == ["0", "1"]
    with pytest.raises(DataError, match="per_category"):
        select(prompts, None, per_category=0)


def test_second_turn_renders_the_first_answer(tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir("llama"))
    p = Prompt("1", ["first question", "second question"], "writing")
    text = tok.decode(render(p, tok, True, 1, answers=["my answer"]))
    assert text.index("first question") < text.index("my answer") < text.index("second question")
    assert text.count("<|im_start|>assistant") == 2 and text.endswith("<|im_start|>assistant\n")
    plain = tok.decode(render(p, tok, False, 1, answers=["my answer"]))
    assert "first question" in plain and "my answer" in plain and plain.endswith("second question")
    with pytest.raises(DataError, match="has 2 turn"):
        render(p, tok, True, 2)


def test_shipped_sets():
    mt = load_prompts("builtin:mt_bench.jsonl")
    assert len(mt) == 80 and {p.category for p in mt} == set(MT_BENCH_CATEGORIES)
    assert [p.id for p in select(mt, None, per_category=1)] == ["81", "91", "101", "111", "121", "131", "141", "151"]
    gsm = load_prompts("builtin:train/gsm8k_train.jsonl", field_name="question")
    assert len(gsm) == 100 and gsm[0].turns[0].startswith("Natalia sold clips to 48 of her friends")
    code = load_prompts("builtin:train/code_alpaca.json", field_name="instruction")
    assert len(code) == 100
    seeds = load_prompts("builtin:train/alpaca_seed_tasks.jsonl", field_name="instruction")
    assert len(seeds) == 175


def test_shipped_sets_are_found_from_any_directory(tmp_path):
    """builtin: names resolve inside the installed package, not against the working directory."""
    code = "from specdec.data import load_prompts; print(len(load_prompts('builtin:mt_bench.jsonl')))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "80"


def test_unknown_shipped_set_lists_the_shipped_ones():
    with pytest.raises(DataError, match="^builtin:mt_bench.json: no such prompt set shipped with specdec; "
                                        "shipped: builtin:") as err:
        load_prompts("builtin:mt_bench.json")
    shipped = str(err.value).split("shipped: ")[1].split(", ")
    assert {"builtin:mt_bench.jsonl", "builtin:train", "builtin:train/gsm8k_train.jsonl"} <= set(shipped)
    with pytest.raises(DataError, match="no such prompt set"):
        builtin_path("builtin:../data.py")  # stays inside specdec/prompts/


def test_shipped_files_are_package_data_with_a_source_and_license():
    """Every file of specdec/prompts/ is matched by pyproject's package-data globs (so that a
    non-editable install carries it) and named, with its license, in the folder's README."""
    import fnmatch
    import tomllib

    repo = BUILTIN_DIR.parents[1]
    globs = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["specdec"]
    files = [str(f.relative_to(BUILTIN_DIR.parent)) for f in BUILTIN_DIR.rglob("*") if f.is_file()
             and "__pycache__" not in f.parts]
    assert {"prompts/README.md", "prompts/mt_bench.jsonl", "prompts/train/gsm8k_train.jsonl"} <= set(files)
    assert all(any(fnmatch.fnmatch(f, g) for g in globs) for f in files), (files, globs)
    readme = (BUILTIN_DIR / "README.md").read_text()
    for f in files:
        if not f.endswith("README.md"):  # its row: file | rows | what | source | license
            row = next(line for line in readme.splitlines() if line.startswith(f"| `{f.split('/', 1)[1]}`"))
            source, license = [c.strip() for c in row.strip("|").split("|")][3:5]
            assert source and re.search(r"Apache-2.0|MIT", license), row
    assert all(f.stat().st_size < 200_000 for f in BUILTIN_DIR.rglob("*") if f.is_file())  # small files


def test_garbage_files_give_one_clear_error_and_no_library_log(tmp_path):
    """Not JSON at all, or a csv pyarrow cannot parse: a DataError naming the file, and nothing
    logged by `datasets` before it."""
    bad = write(tmp_path, "g.jsonl", b"\x00\x01garbage{{\nmore")
    code = ("import sys\nfrom specdec.data import load_prompts, DataError\n"
            "for f in sys.argv[1:]:\n"
            "    try: load_prompts(f)\n"
            "    except DataError as e: print('DataError:', str(e).splitlines()[0])\n")
    csv_bad = write(tmp_path, "g.csv", b'a,b\n1,2,3,4\n"x\n')
    proc = subprocess.run([sys.executable, "-c", code, str(bad), str(csv_bad)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == [f"DataError: 2 bad record(s) in {bad}:",
                                        f"DataError: {csv_bad}: not a readable csv file "
                                        + proc.stdout.splitlines()[1].split("not a readable csv file ", 1)[1]]
    assert proc.stderr == ""


def test_round_robin_takes_each_category_in_turn():
    from specdec.data import Prompt, round_robin

    prompts = [Prompt(id=f"{c}{i}", category=c, turns=["q"]) for c, n in (("a", 3), ("b", 1), ("c", 2))
               for i in range(n)]
    assert [p.id for p in round_robin(prompts)] == ["a0", "b0", "c0", "a1", "c1", "a2"]
    assert round_robin([]) == []

import json

import pytest

from specdec.data import DataError, default_prompts, load_prompt_file, select


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


def test_real_mt_bench(shared_data):
    prompts = load_prompt_file(shared_data / "mt_bench.jsonl")
    assert len(prompts) == 80 and all(len(p.turns) == 2 for p in prompts)


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

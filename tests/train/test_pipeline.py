"""The whole pipeline on a tiny target: prompts from a training-data folder (GSM8K / Code Alpaca /
seed-task formats), self-instruct and Magpie, self-distillation shards with a manifest (a second run
resumes instead of regenerating), training, export in the official format with a model card,
and evaluation through the engine (greedy outputs equal to the target's)."""
import json

import pytest

from specdec.data import DataError
from specdec.drafters.train.pipeline import EvalConfig, Plan, run
from specdec.drafters.train import check
from specdec.drafters.train import prompts as prompt_sets
from specdec.drafters.train.prompts import (FOLLOW_UPS, copy_tasks, magpie_prefix, parse_instruction, parse_query,
                                            training_prompts)
from specdec.drafters.train.selfdistill import DataConfig, generate, magpie_turns
from specdec.drafters.train.shards import Manifest, read_shards
from specdec.drafters.train.trainer import TrainConfig
from specdec.engine.config import EngineConfig
from specdec.models.loader import load_model


def write_prompts(d):
    d.mkdir()
    (d / "gsm8k_train.jsonl").write_text("\n".join(json.dumps({"question": f"what is {i} plus {i}?",
                                                               "answer": "x"}) for i in range(4)))
    (d / "code_alpaca.json").write_text(json.dumps([{"instruction": "sort a list", "input": "1, 3, 2",
                                                     "output": "x"}]))
    (d / "alpaca_seed_tasks.jsonl").write_text("\n".join(json.dumps({"instruction": f"name {i} fruits",
                                                                     "instances": [{"input": ""}]}) for i in range(3)))
    return d


def test_pipeline_end_to_end(tiny_dir, tmp_path):
    loaded = load_model(str(tiny_dir("llama", num_hidden_layers=4)))
    prompts_dir = write_prompts(tmp_path / "prompts")
    plan = Plan(kind="eagle3", work_dir=tmp_path / "work",
                options={"steps": 2, "draft_vocab_size": 40, "feature_layers": (0, 1, 3)},
                drafter_options={"total_tokens": 10, "depth": 3, "top_k": 3},
                data=DataConfig(prompts_dir=str(prompts_dir), max_prompts=6, self_instruct=2, magpie=3,
                                max_new_tokens=12, max_len=256, shard_size=4, store_hidden=True),
                train=TrainConfig(steps=6, batch_size=2, max_len=128, warmup=1, save_every=3),
                engine=EngineConfig(device="cpu"), eval=EvalConfig(num_prompts=2, max_new_tokens=8))
    summary = run(loaded, plan, log=lambda *_: None)
    manifest = Manifest.load(plan.data_dir)
    assert manifest.prompts_done >= 6 and len(manifest.shards) >= 2
    assert "magpie prompts" in manifest.info["sources"]
    examples = read_shards(plan.data_dir)
    assert examples[0].aux.shape[-1] == 3 * 64  # stored features: final hidden + 3 layers
    assert summary["train"]["steps"] == 6
    assert summary["eval"]["greedy_equal"] == 2 and summary["eval"]["mean_accepted_length"] >= 1.0
    card = (plan.export_dir / "README.md").read_text()
    assert "EAGLE-3" in card and "tau (T=0" in card and "self-instruct prompts: " in card
    recorded = check.load(plan.export_dir)  # the check set's tau, which the CPU tests hold a head to
    assert recorded == summary["eval"]["check"] and recorded["num_prompts"] == check.NUM_PROMPTS
    assert "tau on the check set" in card
    config = json.loads((plan.export_dir / "config.json").read_text())
    assert config["draft_vocab_size"] == 40 and config["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [1, 2, 4]
    # a second run resumes: no prompt is answered again, training is already done
    again = run(loaded, Plan(**{**plan.__dict__, "stages": ("data", "train")}), log=lambda *_: None)
    assert Manifest.load(plan.data_dir).shards == manifest.shards and again["train"]["steps_this_run"] == 0


def test_rounds_add_to_one_learning_curve(tiny_dir, tmp_path):
    """Each round's export holds the curve (tau against training tokens) of the head it went on
    from plus its own point; re-exporting a round does not count it twice; the card lists the
    curve and the report plots it."""
    from specdec.drafters.train import curve
    from specdec.report import report

    loaded = load_model(str(tiny_dir("llama", num_hidden_layers=4)))
    prompts_dir = write_prompts(tmp_path / "prompts")

    def round_(name, **options):
        plan = Plan(kind="eagle3", work_dir=tmp_path / name,
                    options={"steps": 2, "draft_vocab_size": 40, "feature_layers": (0, 1, 3), **options},
                    drafter_options={"total_tokens": 10, "depth": 3, "top_k": 3}, data_dir=tmp_path / "data",
                    data=DataConfig(prompts_dir=str(prompts_dir), max_prompts=6, max_new_tokens=12,
                                    max_len=256, shard_size=4),
                    train=TrainConfig(steps=4, batch_size=2, max_len=128, warmup=1, save_every=2),
                    engine=EngineConfig(device="cpu"), eval=EvalConfig(num_prompts=2, max_new_tokens=8, check=False))
        return plan, run(loaded, plan, log=lambda *_: None)

    first, s1 = round_("r1")
    points = curve.load(first.export_dir)
    assert len(points) == 1 and points[0]["tokens"] == s1["train"]["round_tokens"] > 0
    assert points[0]["tau"] == round(s1["eval"]["mean_accepted_length"], 4)
    second, s2 = round_("r2", init_from=str(first.export_dir))
    points = curve.load(second.export_dir)
    assert [p["tokens"] for p in points] == [s1["train"]["round_tokens"],
                                             s1["train"]["round_tokens"] + s2["train"]["round_tokens"]]
    run(loaded, Plan(**{**second.__dict__, "stages": ("export", "eval")}), log=lambda *_: None)
    assert len(curve.load(second.export_dir)) == 2  # the same round, exported again
    into_first = {**second.__dict__, "stages": ("export",), "export_dir": first.export_dir}
    for _ in range(2):  # into the folder it went on from, twice: its point replaces its own
        run(loaded, Plan(**into_first), log=lambda *_: None)
        assert [p["round"] for p in curve.load(first.export_dir)] == [p["round"] for p in points]
    assert "Learning curve" in (second.export_dir / "README.md").read_text()
    out = report([tmp_path / "r1" / "export", tmp_path / "r2" / "export"], tmp_path / "report", progress=False)
    assert (tmp_path / "report" / "learning_curves.png").is_file() and out["runs"] == 0
    assert "r2/export | " in (tmp_path / "report" / "report.md").read_text()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / curve.FILE).write_text("{}")
    with pytest.raises(ValueError, match="is not a learning curve"):
        curve.load(tmp_path / "bad")


def test_shipped_training_prompts_interleave_the_three_sets():
    prompts = training_prompts("builtin:train", 2000)
    assert len(prompts) == 375 == len(set(prompts))  # 100 GSM8K + 100 Code Alpaca + 175 seed tasks
    first = training_prompts("builtin:train", 6)
    assert first == prompts[:6]
    gsm = [p for p in first if "?" in p and any(c.isdigit() for c in p)]
    assert len(gsm) >= 2  # one of each source in turn, not 6 of the first


def test_a_prompt_folder_that_is_not_there_is_an_error(tmp_path):
    """A typo in data.prompts_dir must not train on nothing: the error names the option and what
    it takes; null means no public prompts."""
    with pytest.raises(DataError, match="data.prompts_dir=.*absent: no such folder; use builtin:train"):
        training_prompts(tmp_path / "absent", 10)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds none of gsm8k_train.jsonl"):
        training_prompts(tmp_path / "empty", 10)
    assert training_prompts(None, 10) == []


def test_copy_tasks_read_the_training_rows_only(tmp_path, monkeypatch):
    """Copy-heavy prompts wrap the folder's text in task templates, every kind in turn, each
    prompt over its own passage; rows past TRAIN_ROWS (the evaluation mix's) are never read."""
    folder = write_prompts(tmp_path / "prompts")
    code = [{"instruction": "fix it", "input": "def f(x):\n    return (x + 1) * 2  # a comment; y = f(3)"}]
    (folder / "code_alpaca.json").write_text(json.dumps(code))
    tasks = copy_tasks(str(folder), 14, seed=1)
    assert len(tasks) == 14 and tasks == copy_tasks(str(folder), 14, seed=1)
    assert sum("def f(x)" in t for t in tasks) == 2  # the code kind, every seventh prompt
    assert any(t.startswith(("Translate into", "Please give a", "How would you say")) for t in tasks)
    assert all("what is" in t or "def f(x)" in t for t in tasks)  # every one carries a passage
    monkeypatch.setattr(prompt_sets, "TRAIN_ROWS", 2)
    assert not any("what is 2 plus" in t or "what is 3 plus" in t for t in copy_tasks(str(folder), 14))
    assert training_prompts(str(folder), 100) and "what is 3 plus 3?" not in training_prompts(str(folder), 100)
    assert copy_tasks(None, 5) == [] and copy_tasks(str(folder), 0) == []


def test_conversations_go_on_for_a_second_turn(tiny_dir, tmp_path):
    """data.follow_ups conversations get a second turn (a template's follow-up, or one the
    target writes after its answer): an example whose prompt holds the first question, the
    target's first answer and the follow-up. The manifest counts them; a rerun resumes."""
    loaded = load_model(str(tiny_dir("llama", num_hidden_layers=4)))
    cfg = DataConfig(prompts_dir=str(write_prompts(tmp_path / "prompts")), max_prompts=4, copy_tasks=3,
                     follow_ups=5, follow_up_source="mix", max_new_tokens=6, max_len=512, shard_size=3)
    manifest = generate(loaded, tmp_path / "data", cfg, EngineConfig(device="cpu"), log=lambda *_: None)
    made = manifest.info["second turns"]
    assert manifest.info["sources"]["copy-heavy task prompts (summarize, extract, translate, passage QA, "
                                    "documents, rewrite, code)"] == 3
    examples = read_shards(tmp_path / "data")
    seconds = [e for e in examples if loaded.tokenizer.decode(e.tokens).count("<|im_start|>user") == 2]
    assert len(seconds) == sum(made.values()) == 5 == len(examples) - 7 and made["template follow-ups"] >= 2
    texts = [loaded.tokenizer.decode(e.tokens[: e.prompt_len]) for e in seconds]
    # (the tiny tokenizer has no capitals: a capital decodes as <unk>)
    assert sum(any(f[1:12] in t for f in FOLLOW_UPS) for t in texts) >= made["template follow-ups"]
    assert all(t.count("<|im_start|>assistant") == 2 for t in texts)  # the first answer, then the prompt for the second
    again = generate(loaded, tmp_path / "data", cfg, EngineConfig(device="cpu"), log=lambda *_: None)
    assert again.shards == manifest.shards and again.info["second turns"] == made
    with pytest.raises(ValueError, match="data.follow_up_source must be one of template, target, mix"):
        generate(loaded, tmp_path / "other", DataConfig(follow_ups=1, follow_up_source="user"), EngineConfig(device="cpu"))
    loaded.tokenizer.chat_template = None
    with pytest.raises(ValueError, match="set data.follow_up_source=template"):
        generate(loaded, tmp_path / "other", DataConfig(follow_ups=1), EngineConfig(device="cpu"))


@pytest.mark.parametrize("text, want", [("1. Write a haiku about rain.\nmore", "Write a haiku about rain."),
                                        ("Task: Summarize this article in two lines", "Summarize this article in two lines"),
                                        ("ok", None), ("\n\n- List five prime numbers please", "List five prime numbers please")])
def test_parse_self_instruct_lines(text, want):
    assert parse_instruction(text) == want


def test_magpie_prefix_is_the_template_up_to_the_user_message(tiny_dir):
    tok = load_model(str(tiny_dir("llama", num_hidden_layers=4))).tokenizer
    assert tok.decode(magpie_prefix(tok)) == "<|im_start|>user\n"
    tok.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        magpie_prefix(tok)


def test_magpie_keeps_finished_usable_turns_once(tiny_dir):
    from types import SimpleNamespace

    tok = load_model(str(tiny_dir("llama", num_hidden_layers=4))).tokenizer
    turn = lambda text, why: SimpleNamespace(output=tok.encode(text, add_special_tokens=False), finish_reason=why)
    seqs = [turn("how do tides work?", "stop"), turn("write a poem about rain", "length"),
            turn("ok", "stop"), turn(" how do tides work? ", "stop"), turn("name three rivers", "stop")]
    assert magpie_turns(seqs, tok) == ["how do tides work?", "name three rivers"]
    assert parse_query("x" * 1501) is None and parse_query("  name three rivers \n") == "name three rivers"


GPU_KINDS = [("eagle", {"steps": 2}, {"total_tokens": 10, "depth": 3, "top_k": 3}),
             ("eagle3", {"steps": 2, "draft_vocab_size": 40, "feature_layers": (0, 1, 3)},
              {"total_tokens": 10, "depth": 3, "top_k": 3}),
             ("medusa", {"num_heads": 2}, {"tree_choices": [[0], [1], [0, 0]]}),
             ("draft", {"num_layers": 1}, {"num_tokens": 3})]


@pytest.mark.gpu
@pytest.mark.parametrize("kind, options, drafter_options", GPU_KINDS, ids=[k[0] for k in GPU_KINDS])
def test_pipeline_on_cuda(kind, options, drafter_options, tiny_dir, tmp_path):
    """The shipped drafters are trained on the GPU in bf16: every stage runs there, the export
    loads back into the engine and the greedy evaluation completes with tau >= 1."""
    loaded = load_model(str(tiny_dir("llama", num_hidden_layers=4)), device="cuda")
    prompts_dir = write_prompts(tmp_path / "prompts")
    plan = Plan(kind=kind, work_dir=tmp_path / "work", options=options, drafter_options=drafter_options,
                data=DataConfig(prompts_dir=str(prompts_dir), max_prompts=6, self_instruct=2,
                                max_new_tokens=12, max_len=256, shard_size=4, store_hidden=kind == "eagle3"),
                train=TrainConfig(steps=4, batch_size=2, max_len=128, warmup=1, save_every=2),
                engine=EngineConfig(device="cuda"), eval=EvalConfig(num_prompts=3, max_new_tokens=8, check=False))
    summary = run(loaded, plan, log=lambda *_: None)
    assert summary["train"]["steps"] == 4
    assert summary["eval"]["mean_accepted_length"] >= 1.0 and summary["eval"]["num_prompts"] == 3
    assert (plan.export_dir / "README.md").is_file()


def test_card_of_a_run_without_evaluation_says_so(tmp_path):
    """stages=[train,export]: no tau to report, and the card says so instead of printing
    n/a / None / nan; a warm-started head names what it started from."""
    from specdec.drafters.train.card import write_card

    (tmp_path / "model.safetensors").write_bytes(b"")
    data = {"examples": 7, "tokens": 700, "sources": "magpie prompts: 9"}
    train = {"steps": 5, "batch_size": 2, "lr": 3e-4, "train_s": 1.0, "device": "cpu"}
    card = write_card(tmp_path, "eagle", "tiny", data, train, {}, "cmd", started_from="default").read_text()
    assert "not measured" in card and "started from | default" in card
    assert not any(s in card for s in ("nan", "None", "n/a", "Acceptance per depth"))
    assert "7 examples, 700 tokens (answers to a prompt list of magpie prompts: 9)" in card
    evaluation = {"mean_accepted_length": 2.5, "mean_accepted_draft_tokens": 1.5, "num_prompts": 4,
                  "prompts": "mt_bench.jsonl", "output_tokens": 99, "accept_rate_per_depth": [0.7, 0.5]}
    card = write_card(tmp_path, "eagle", "tiny", data, train, evaluation, "cmd").read_text()
    assert "| tau (T=0, accepted + 1) | 2.500 on 4 mt_bench.jsonl, 99 tokens |" in card
    assert "Acceptance per depth: [0.7, 0.5]" in card and "started from" not in card

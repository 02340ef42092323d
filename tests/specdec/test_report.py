"""The report's plots on summaries written here: a plot is drawn only when its x axis varies in the
runs, and series that coincide (ngram's points under ngram_tree's) stay visible."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from specdec import report  # noqa: E402


def summary(method, budget=9, batch=1, rates=(0.5, 0.25), tau=1.5, tps=100.0, overrides=()):
    return {"method": method, "drafter": method, "role": "run", "tree_budget": budget,
            "mean_accepted_length": tau, "tokens_per_s": tps, "accept_rate_per_depth": list(rates),
            "accepted_length_histogram": [4, 2, 1], "overrides": list(overrides),
            "requests": [{"e2e_ms": 10.0, "ttft_ms": 1.0}, {"e2e_ms": 12.0, "ttft_ms": 2.0}],
            "config": {"verifier": {"temperature": 0.0}, "engine": {"max_num_seqs": batch},
                       "serving": {"request_rate": None}}}


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_plots_whose_x_axis_does_not_vary_are_left_out_with_the_reason(tmp_path):
    runs = [summary("ngram", budget=9), summary("ngram_tree", budget=25)]  # one budget per method
    made, skipped = report.plots(runs, tmp_path)
    assert sorted(p.name for p in made) == ["acceptance_per_depth.png", "accepted_lengths.png", "latency_cdf.png"]
    assert skipped.pop("calibration").startswith("no run used speculation=adaptive")
    assert skipped == {
        "tau_vs_tree_budget": "each method ran at one tree budget (sweep drafter.total_tokens, as "
                              "experiment=eagle_tree_sweep does)",
        "throughput_vs_batch": "every run had one batch size (sweep engine.max_num_seqs, as "
                               "experiment=batch_sweep does)"}
    assert not (tmp_path / "tau_vs_tree_budget.png").exists()


def test_a_swept_axis_is_drawn():
    runs = [summary("eagle", budget=b, tau=1 + b / 20, overrides=[f"drafter.total_tokens={b}"]) for b in (16, 32)]
    fig = report.plot_tau_budget(plt, runs)
    (line,) = fig.axes[0].lines
    assert list(line.get_xdata()) == [16, 32]
    runs = [summary("ngram", batch=b, tps=50.0 * b) for b in (1, 4)]
    (line,) = report.plot_throughput(plt, runs).axes[0].lines
    assert list(line.get_xdata()) == [1, 4] and list(line.get_ydata()) == [50.0, 200.0]


def test_a_drafter_without_acceptance_data_leaves_the_depth_plots_out():
    runs = [summary("none", budget=1, rates=())]
    runs[0]["accepted_length_histogram"] = [9]
    assert "two draft depths" in report.plot_acceptance(plt, runs)
    assert "same number of tokens" in report.plot_histogram(plt, runs)


def test_coinciding_series_stay_visible():
    """ngram and ngram_tree with the same numbers: on the depth axis the second is shifted
    sideways; on a swept axis the two lines differ in marker, size and line style."""
    runs = [summary("ngram"), summary("ngram_tree")]
    a, b = report.plot_acceptance(plt, runs).axes[0].lines
    assert list(a.get_ydata()) == list(b.get_ydata())
    assert all(xa < xb for xa, xb in zip(a.get_xdata(), b.get_xdata()))
    assert all(abs(xb - xa) <= 0.3 for xa, xb in zip(a.get_xdata(), b.get_xdata()))
    runs = [summary(m, budget=bud, tau=2.0, overrides=[f"drafter.max_nodes={bud}"])
            for m in ("ngram", "ngram_tree") for bud in (9, 17)]
    a, b = report.plot_tau_budget(plt, runs).axes[0].lines
    assert list(a.get_xydata().ravel()) == list(b.get_xydata().ravel())
    assert a.get_marker() != b.get_marker() and a.get_linestyle() != b.get_linestyle()
    assert a.get_markersize() > b.get_markersize() and a.get_markerfacecolor() == "none"


def test_speculation_policies_calibration_and_step_costs():
    """Throughput vs batch draws a series per policy; the adaptive runs' calibration (predicted
    vs emitted tokens per step) is drawn, and their step costs go in a table."""
    fixed = [summary("eagle", batch=b, tps=40.0 * b) for b in (1, 4)]
    adaptive = [summary("eagle", batch=b, tps=50.0 * b) for b in (1, 4)]
    for r in adaptive:
        r["speculation"] = {"policy": "adaptive", "step_costs_ms": {"1x1": 2.0, "1x16": 3.5},
                            "calibration": [{"predicted": 1.125, "emitted": 1.1, "steps": 9},
                                            {"predicted": 2.375, "emitted": 2.2, "steps": 4}]}
    lines = report.plot_throughput(plt, fixed + adaptive).axes[0].lines
    assert sorted(line.get_label() for line in lines) == ["eagle T=0 adaptive", "eagle T=0 fixed"]
    fig = report.plot_calibration(plt, adaptive)
    assert [list(line.get_ydata()) for line in fig.axes[0].lines][1] == [1.1, 2.2]
    table = report.step_cost_table(adaptive)
    assert "| eagle T=0 | 1 | 16 | 3.50 |" in table
    assert report.step_cost_table(fixed) == "No run used speculation=adaptive."


def test_every_table_shows_one_speedup_and_names_it():
    """The measured confusion: one report showed the same run at 0.78x (Spec-Bench layout) and
    3.77x (EAGLE layout). A summary whose `speedup` holds another number (a throughput ratio, as
    older summaries did) shows the one definition in every table, named in each caption."""
    q = {"category": "writing", "decode_steps": 4, "step_tokens": 8.0}
    run = {**summary("ngram"), "speedup": 3.77,
           "questions": {"a": {**q, "output_tokens": 8, "time_s": 1.0}, "b": {**q, "output_tokens": 8, "time_s": 4.0}},
           "baseline": {"method": "interleaved", "source": "interleaved: x/baseline",
                        "questions": {"a": {**q, "output_tokens": 8, "time_s": 2.0},
                                      "b": {**q, "output_tokens": 8, "time_s": 8.0}}}}
    run["config"]["model"] = {"path": "m"}
    sb_md, sb = report.spec_bench_tables([run])
    ea_md, ea = report.eagle_tables([run])
    (rec,) = report.run_records([{**run, "_path": "x/summary.json"}])
    assert sb[0]["overall_speedup"] == ea[0]["speedup"] == rec["speedup"] == pytest.approx(2.0)  # (8 + 2) / (4 + 1)
    assert report.SHORT in sb_md and report.SHORT in ea_md

"""Tables and plots from finished runs: ``python -m specdec.report DIR... [--out OUT]``.

Collects every ``summary.json`` under the given directories (a sweep, several sweeps, single runs)
and writes into OUT (default: DIR/report):

- ``report.md``: the Spec-Bench leaderboard layout (speedup and tau per category, one table per
  setting and temperature; MT-bench's 8 categories form one "multi-turn" column when the data has
  Spec-Bench's other tasks, as the leaderboard does), the EAGLE paper layout (speedup and tau per
  method x temperature), and every run;
- ``spec_bench.csv``, ``eagle.csv``, ``runs.csv``: the same numbers;
- PNG plots: acceptance rate per depth, histogram of accepted lengths, tau vs tree budget,
  throughput vs batch size (a series per method and speculation policy), latency CDFs, and the
  adaptive policy's calibration (tokens per step it predicted vs emitted); each only when its x
  axis varies in the runs (report.md says why one was left out);
- the step costs the adaptive policy measured (ms per step, by batch bucket x node budget);
- learning curves: every trained head's ``curve.json`` under the directories (tau against training
  tokens, one point per round, drafters/train/curve.py), as a table and ``learning_curves.png``;
  ``python -m specdec.report drafters/weights`` reports the shipped heads' alone.

Speedup has one definition in every table (specdec/speedup.py, DEFINITION: Spec-Bench's mean
question speed over the baseline's on the same questions), computed from the per-question numbers
the runs recorded against the baselines they measured (each run's ``baseline`` column says how:
interleaved with it, reused after a check, re-measured); nothing is re-measured here. Runs that
failed (a ``FAILED`` file in their folder) are left out, and listed.
"""
from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path
from typing import Iterable, Optional

from tqdm.auto import tqdm

from specdec import experiment as exp
from specdec.speedup import DEFINITION, SHORT
from specdec.data import MT_BENCH_CATEGORIES, SPEC_BENCH_CATEGORIES

SPEC_BENCH_ONLY = set(SPEC_BENCH_CATEGORIES) - set(MT_BENCH_CATEGORIES)
MULTI_TURN = "multi-turn"  # Spec-Bench's "Multi-turn Conversation" column: MT-bench's categories
COLUMN_ORDER = (MULTI_TURN,) + SPEC_BENCH_CATEGORIES


# ---- collecting --------------------------------------------------------------------------------
def collect(dirs: Iterable[str | Path], progress: bool = True) -> list[dict]:
    """Finished runs under ``dirs``: failed runs, copies kept by the baseline store and a check's
    sample are skipped, and a baseline timed with a run stands in for drafter none (one per
    setting) only where the runs have no such row."""
    paths = sorted({p for d in dirs for p in Path(d).rglob("summary.json")})
    runs = []
    for path in tqdm(paths, desc="summaries", unit="file", disable=not progress):
        s = exp.read_json(path) or {}
        run_dir = path.parent.parent if s.get("role") == "baseline" else path.parent
        if exp.failed(run_dir) is not None:
            continue  # a failed run (or the baseline of one): failures() lists them
        if exp.is_complete(s) and s.get("role", "run") in ("run", "baseline"):
            runs.append({**s, "_path": str(path)})
    own = {r.get("baseline_key") for r in runs if r.get("role", "run") == "run" and r["drafter"] == "none"}
    stand_ins: dict = {}
    for r in runs:
        if r.get("role") == "baseline" and r.get("baseline_key") not in own:
            stand_ins.setdefault(r.get("baseline_key"), r)
    return [r for r in runs if r.get("role", "run") == "run" or stand_ins.get(r.get("baseline_key")) is r]


def failures(dirs: Iterable[str | Path]) -> list[tuple[Path, str]]:
    """Runs under ``dirs`` that failed: (folder, the error their FAILED file records)."""
    found = sorted({p.parent for d in dirs for p in Path(d).rglob(exp.FAILED)})
    return [(folder, (exp.failed(folder) or {}).get("error", "?")) for folder in found]


def speedup(run: dict) -> Optional[float]:
    """The run's speedup (specdec/speedup.py DEFINITION) from its per-question numbers and its
    baseline's; None without them."""
    base = (run.get("baseline") or {}).get("questions")
    if not run.get("questions") or not base:
        return None
    return exp.category_stats(run["questions"], base)["overall"]["speedup"]


def cfg(run: dict, dotted: str, default=None):
    node = run.get("config", {})
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def temperature(run: dict) -> float:
    return float(cfg(run, "verifier.temperature", 0.0))


def label(run: dict, skip: tuple[str, ...] = ()) -> str:
    """The method, with the drafter/verifier overrides that distinguish sweep points (except
    those in ``skip``)."""
    method = run.get("method") or run["drafter"]
    if run.get("role") == "baseline":
        method = "none"
    extra = [o.split("=", 1)[0].split(".", 1)[1] + "=" + o.split("=", 1)[1]
             for o in run.get("overrides", []) if o.startswith(("drafter.", "verifier."))
             and not o.startswith(("verifier.temperature", "drafter.path") + skip)]
    return " ".join([method] + extra)


BUDGET_KEYS = ("drafter.total_tokens", "drafter.max_nodes")  # the x axis of tau vs tree budget


def setting(run: dict) -> str:
    """What a table holds fixed: model, data, output length, engine and serving."""
    parts = [f"model={cfg(run, 'model.path')}", f"data={cfg(run, 'data.name')}"]
    for key in ("data.num_prompts", "data.per_category", "data.max_turns"):
        if cfg(run, key, 1 if key == "data.max_turns" else None) != (1 if key == "data.max_turns" else None):
            value = cfg(run, key)
            parts.append(f"{key.split('.')[1]}={'all' if value is None else value}")
    parts += [f"max_new_tokens={cfg(run, 'max_new_tokens')}", f"batch={cfg(run, 'engine.max_num_seqs')}"]
    for key in ("serving.concurrency", "serving.request_rate"):
        if cfg(run, key) is not None:
            parts.append(f"{key.split('.')[1]}={cfg(run, key)}")
    return " ".join(parts)


def groups_for(runs: list[dict]) -> Optional[dict[str, str]]:
    cats = {q["category"] for r in runs for q in r.get("questions", {}).values()}
    return {c: MULTI_TURN for c in MT_BENCH_CATEGORIES} if cats & SPEC_BENCH_ONLY else None


def by(runs: list[dict], key) -> dict:
    out: dict = {}
    for r in runs:
        out.setdefault(key(r), []).append(r)
    return out


# ---- tables ------------------------------------------------------------------------------------
def fmt(x: Optional[float], spec: str = ".2f", suffix: str = "") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:{spec}}{suffix}"


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] * len(header)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def spec_bench_rows(runs: list[dict]) -> tuple[list[str], list[dict]]:
    """Per run: per category speedup and tau (regrouped as the leaderboard when it applies)."""
    groups = groups_for(runs)
    rows = []
    for r in runs:
        if not r.get("questions"):  # a summary without per-question data (older runs)
            continue
        base = (r.get("baseline") or {}).get("questions")
        stats = exp.category_stats(r.get("questions", {}), base, groups)
        rows.append({"setting": setting(r), "method": label(r), "temperature": temperature(r),
                     "stats": stats, "run": r})
    cats = {c for row in rows for c in row["stats"] if c != "overall"}
    order = [c for c in COLUMN_ORDER if c in cats] + sorted(cats - set(COLUMN_ORDER))
    return order, rows


def spec_bench_tables(runs: list[dict]) -> tuple[str, list[dict]]:
    cats, rows = spec_bench_rows(runs)
    md, records = [], []
    for (sett, temp), group in sorted(by(rows, lambda x: (x["setting"], x["temperature"])).items()):
        table = []
        for row in sorted(group, key=lambda x: x["method"]):
            st = row["stats"]
            cells = [fmt(st.get(c, {}).get("speedup"), ".2f", "x") + " / " + fmt(st.get(c, {}).get("mean_accepted_length"))
                     for c in cats]
            overall = st["overall"]
            table.append([row["method"]] + cells + [fmt(overall["mean_accepted_length"]),
                                                     fmt(overall["speedup"], ".2f", "x")])
            rec = {"setting": sett, "temperature": temp, "method": row["method"]}
            for c in cats + ["overall"]:
                rec[f"{c}_speedup"] = st.get(c, {}).get("speedup")
                rec[f"{c}_tau"] = st.get(c, {}).get("mean_accepted_length")
                rec[f"{c}_tokens_per_s"] = st.get(c, {}).get("tokens_per_s")
            records.append(rec)
        md.append(f"**{sett}, temperature {temp:g}** (cell: speedup / tau; speedup: {SHORT})\n\n"
                  + markdown(["method"] + cats + ["mean tau", "overall"], table))
    return "\n\n".join(md), records


def eagle_tables(runs: list[dict]) -> tuple[str, list[dict]]:
    """Rows: methods; columns: speedup and tau at each temperature (EAGLE paper tables)."""
    md, records = [], []
    for sett, group in sorted(by(runs, setting).items()):
        temps = sorted({temperature(r) for r in group})
        table = []
        for method, rs in sorted(by(group, label).items()):
            at = {temperature(r): r for r in rs}
            cells = []
            for t in temps:
                r = at.get(t)
                cells += [fmt(speedup(r) if r else None, ".2f", "x"),
                          fmt(r["mean_accepted_length"] if r else None)]
                if r:
                    records.append({"setting": sett, "method": method, "temperature": t,
                                    "speedup": speedup(r), "tau": r["mean_accepted_length"],
                                    "tokens_per_s": r["tokens_per_s"],
                                    "baseline_tokens_per_s": r.get("baseline_tokens_per_s")})
            table.append([method] + cells)
        header = ["method"] + [x for t in temps for x in (f"T={t:g} speedup", f"T={t:g} tau")]
        md.append(f"**{sett}** (speedup: {SHORT})\n\n" + markdown(header, table))
    return "\n\n".join(md), records


RUN_COLUMNS = ["path", "method", "temperature", "drafter", "tree_budget", "max_num_seqs", "request_rate",
               "concurrency", "num_requests", "output_tokens", "tokens_per_s", "speedup",
               "baseline_tokens_per_s", "baseline_method", "baseline_source", "baseline_why",
               "throughput_ratio", "mean_accepted_length",
               "mean_accepted_draft_tokens", "ttft_ms_p50", "itl_ms_p50", "e2e_ms_p50", "e2e_ms_p99",
               "draft_time_share", "reused"]


def run_records(runs: list[dict]) -> list[dict]:
    out = []
    for r in runs:
        rec = {k: r.get(k) for k in RUN_COLUMNS}
        base = r.get("baseline") or {}
        rec.update(path=str(Path(r["_path"]).parent), method=label(r), temperature=temperature(r),
                   max_num_seqs=cfg(r, "engine.max_num_seqs"), request_rate=cfg(r, "serving.request_rate"),
                   concurrency=cfg(r, "serving.concurrency"), speedup=speedup(r),
                   baseline_method=base.get("method"), baseline_source=base.get("source"),
                   baseline_why=base.get("why"))
        out.append(rec)
    return out


def write_csv(path: Path, records: list[dict]) -> None:
    cols = list(dict.fromkeys(k for rec in records for k in rec))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(records)


# ---- plots -------------------------------------------------------------------------------------
# A plot is drawn only when its x axis varies in the runs (a tau-vs-budget plot of one budget per
# method says nothing); the report says why each other plot was left out. Series that coincide
# stay visible: open markers that shrink series by series, a line style each, and on the integer
# depth axis a small sideways offset per series.
MARKERS = "osD^vP*X"
LINESTYLES = ("-", "--", ":", "-.")


def plots(runs: list[dict], out: Path) -> tuple[list[Path], dict[str, str]]:
    """(PNG files written, {plot left out: why})."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made, skipped = [], {}
    for name, draw in (("acceptance_per_depth", plot_acceptance), ("accepted_lengths", plot_histogram),
                       ("tau_vs_tree_budget", plot_tau_budget), ("throughput_vs_batch", plot_throughput),
                       ("latency_cdf", plot_latency), ("calibration", plot_calibration)):
        fig = draw(plt, runs)
        if isinstance(fig, str):
            skipped[name] = fig
            continue
        path = out / f"{name}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        made.append(path)
    return made, skipped


def style(i: int, n: int) -> dict:
    """Series i of n: its marker, line style and a marker size that shrinks from 9 to 4 points,
    so that a later series drawn on an earlier one leaves the earlier one's outline visible."""
    size = 9.0 - 5.0 * i / max(1, n - 1)
    return dict(marker=MARKERS[i % len(MARKERS)], linestyle=LINESTYLES[i % len(LINESTYLES)],
                markersize=size, markerfacecolor="none", markeredgewidth=1.5, alpha=0.9)


def dodge(i: int, n: int, width: float = 0.3) -> float:
    """Sideways offset of series i of n on an integer axis, within +-width/2."""
    return 0.0 if n < 2 else (i / (n - 1) - 0.5) * width


def run_name(r: dict) -> str:
    return f"{label(r)} T={temperature(r):g}"


def plot_acceptance(plt, runs):
    series = []
    for r in runs:
        rates = r.get("accept_rate_per_depth") or []
        pts = [(d + 1, x) for d, x in enumerate(rates) if x is not None and not math.isnan(x)]
        if pts:
            series.append((run_name(r), pts))
    if not any(len(pts) > 1 for _, pts in series):
        return "no run has acceptance data at two draft depths or more"
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, pts) in enumerate(series):
        ax.plot([d + dodge(i, len(series)) for d, _ in pts], [x for _, x in pts], label=name,
                **style(i, len(series)))
    ax.set_xticks(sorted({d for _, pts in series for d, _ in pts}))  # whole depths; points sit beside them
    ax.set(xlabel="draft depth", ylabel="acceptance rate (given the parent was accepted)",
           title="Acceptance rate per depth", ylim=(0, 1.05))
    return legend(ax, fig)


def plot_histogram(plt, runs):
    shown = [r for r in runs if sum(r.get("accepted_length_histogram") or []) > 0]
    if not any(sum(1 for h in r["accepted_length_histogram"] if h) > 1 for r in shown):
        return "every run emitted the same number of tokens at every decode step"
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.8 / max(1, len(shown))
    for i, r in enumerate(shown):
        hist = r["accepted_length_histogram"]
        total = sum(hist)
        ax.bar([a + 1 + (i - (len(shown) - 1) / 2) * width for a in range(len(hist))],
               [h / total for h in hist], width=width, label=run_name(r))
    ax.set(xlabel="tokens per step (accepted drafts + 1)", ylabel="fraction of decode steps",
           title="Accepted lengths")
    return legend(ax, fig)


def _varies(series: dict, x) -> bool:
    """Does some series hold two runs at different x?"""
    return any(len({x(r) for r in rs}) > 1 for rs in series.values())


def plot_tau_budget(plt, runs):
    series = by(runs, lambda r: (label(r, BUDGET_KEYS), temperature(r)))
    budget = lambda r: r.get("tree_budget") or 1  # noqa: E731
    if not _varies(series, budget):
        return ("each method ran at one tree budget (sweep drafter.total_tokens, as "
                "experiment=eagle_tree_sweep does)")
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, ((method, t), rs) in enumerate(sorted(series.items())):
        pts = sorted((budget(r), r["mean_accepted_length"]) for r in rs)
        ax.plot(*zip(*pts), label=f"{method} T={t:g}", **style(i, len(series)))
    ax.set(xlabel="tree budget (nodes, root included)", ylabel="tau (accepted + 1 per step)",
           title="tau vs tree budget")
    return legend(ax, fig)


def policy(r: dict) -> str:
    return (r.get("speculation") or {}).get("policy", "fixed")


def plot_throughput(plt, runs):
    series = by(runs, lambda r: (label(r), temperature(r), cfg(r, "serving.request_rate"), policy(r)))
    batch = lambda r: cfg(r, "engine.max_num_seqs") or 0  # noqa: E731
    if not _varies(series, batch):
        return "every run had one batch size (sweep engine.max_num_seqs, as experiment=batch_sweep does)"
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, ((method, t, rate, pol), rs) in enumerate(sorted(series.items(), key=lambda kv: str(kv[0]))):
        pts = sorted((batch(r), r["tokens_per_s"]) for r in rs)
        name = f"{method} T={t:g} {pol}" + (f" rate={rate}/s" if rate is not None else "")
        ax.plot(*zip(*pts), label=name, **style(i, len(series)))
    ax.set(xlabel="batch size (engine.max_num_seqs)", ylabel="output tokens/s", title="Throughput vs batch size")
    return legend(ax, fig)


def plot_calibration(plt, runs):
    """Per adaptive run: the mean tokens a step emitted against what the policy predicted."""
    cal = {run_name(r): (r.get("speculation") or {}).get("calibration") or [] for r in runs}
    cal = {k: v for k, v in cal.items() if len(v) > 1}
    if not cal:
        return "no run used speculation=adaptive long enough to predict two different step sizes"
    fig, ax = plt.subplots(figsize=(6, 4))
    top = max(c["predicted"] for v in cal.values() for c in v)
    ax.plot([1, top], [1, top], color="0.7", linewidth=1, label="perfect")
    for i, (name, v) in enumerate(sorted(cal.items())):
        ax.plot([c["predicted"] for c in v], [c["emitted"] for c in v], label=name, **style(i, len(cal)))
    ax.set(xlabel="tokens per step, predicted", ylabel="tokens per step, emitted (mean)",
           title="Adaptive speculation: calibration")
    return legend(ax, fig)


def step_cost_table(runs: list[dict]) -> str:
    """The step costs each adaptive run measured: ms per step, by batch bucket x node budget."""
    rows = []
    for r in runs:
        costs = (r.get("speculation") or {}).get("step_costs_ms") or {}
        rows += [[run_name(r), *key.split("x"), f"{ms:.2f}"] for key, ms in costs.items()]
    if not rows:
        return "No run used speculation=adaptive."
    return markdown(["run", "batch bucket", "node budget", "ms per step"], rows)


def plot_latency(plt, runs):
    def latencies(r, key):
        return sorted(q[key] for q in r.get("requests", []) if q.get(key) is not None and not math.isnan(q[key]))

    if not any(len(latencies(r, "e2e_ms")) > 1 for r in runs):
        return "no run has two requests or more"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key, ax, title in (("e2e_ms", axes[0], "end-to-end latency"), ("ttft_ms", axes[1], "time to first token")):
        for i, r in enumerate(runs):
            xs = latencies(r, key)
            if xs:
                ax.step([xs[0]] + xs, [0.0] + [(k + 1) / len(xs) for k in range(len(xs))], where="post",
                        label=run_name(r), linestyle=LINESTYLES[i % len(LINESTYLES)], alpha=0.85)
        ax.set(xlabel="ms", ylabel="fraction of requests", title=f"CDF of {title}", ylim=(0, 1.02))
    legend(axes[0], fig)
    return fig


def legend(ax, fig):
    ax.legend(fontsize=7, loc="best")
    return fig


# ---- entry -------------------------------------------------------------------------------------
def collect_curves(dirs: Iterable[str | Path]) -> list[tuple[str, list[dict]]]:
    """(head folder, its points) of every learning curve (``curve.json``) under ``dirs``."""
    from specdec.drafters.train import curve

    found = sorted({p.parent for d in dirs for p in Path(d).rglob(curve.FILE)})
    return [(f"{p.parent.name}/{p.name}", points) for p in found if (points := curve.load(p))]


def curve_section(curves: list[tuple[str, list[dict]]], out: Path) -> tuple[str, list[Path]]:
    """The learning curves' table and plot (tau against training tokens)."""
    rows = [[name, str(p["tokens"]), fmt(p.get("tau"), ".3f"), f"{p.get('num_prompts')} {p.get('prompts')}",
             str(p.get("date", ""))] for name, points in curves for p in points]
    table = markdown(["head", "training tokens", "tau", "measured on", "date"], rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, points) in enumerate(curves):
        measured = [p for p in points if p.get("tau") is not None]
        ax.plot([p["tokens"] for p in measured], [p["tau"] for p in measured], label=name, **style(i, len(curves)))
    ax.set_xlabel("training tokens (from the curve's first point)")
    ax.set_ylabel("tau (T = 0)")
    ax.set_title("learning curves")
    legend(ax, fig)
    path = out / "learning_curves.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return table, [path]


def report(dirs: list[str | Path], out: Optional[str | Path] = None, progress: bool = True) -> dict:
    """Write the tables and plots; returns {'runs': n, 'files': [...]}."""
    runs = sorted(collect(dirs, progress), key=lambda r: (setting(r), label(r), temperature(r)))
    curves = collect_curves(dirs)
    if not runs and not curves:
        raise SystemExit(f"no finished summary.json (and no curve.json) under {', '.join(map(str, dirs))}")
    out = Path(out) if out else Path(dirs[0]) / "report"
    out.mkdir(parents=True, exist_ok=True)
    if not runs:  # trained heads only: their learning curves
        table, pngs = curve_section(curves, out)
        text = f"# specdec report\n\n## Learning curves\n\n{table}\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in pngs)
        (out / "report.md").write_text(text + "\n")
        return {"runs": 0, "out": str(out), "files": [str(p) for p in pngs], "not_drawn": {}, "failed": []}
    sb_md, sb_rec = spec_bench_tables(runs)
    ea_md, ea_rec = eagle_tables(runs)
    runs_rec = run_records(runs)
    files = {"spec_bench.csv": sb_rec, "eagle.csv": ea_rec, "runs.csv": runs_rec}
    for name, recs in files.items():
        write_csv(out / name, recs)
    pngs, skipped = plots(runs, out)
    curve_table = ""
    if curves:
        curve_table, curve_pngs = curve_section(curves, out)
        pngs += curve_pngs
    failed = failures(dirs)
    for folder, error in failed:
        print(f"left out {folder}: the run failed ({error}; its FAILED file has the traceback)")
    text = "\n\n".join([
        f"# specdec report\n\n{len(runs)} runs from {', '.join(map(str, dirs))}. Speedup, in every table "
        f"below: {DEFINITION}; the runs table says how each run's baseline was timed (interleaved with "
        "the run, reused after a check, re-measured). tau: tokens per decode step (accepted drafts + 1)."
        + "".join(f"\n\nLeft out (failed): {folder} ({error})" for folder, error in failed),
        f"## Spec-Bench layout (speedup / tau per category; speedup: {SHORT})", sb_md,
        f"## EAGLE layout (speedup and tau per method x temperature; speedup: {SHORT})", ea_md,
        f"## Runs (speedup: {SHORT})",
        markdown(["run", "method", "T", "tokens/s", "speedup", "tau", "baseline"],
                 [[run_folder(r["path"]), r["method"], f"{r['temperature']:g}", fmt(r.get("tokens_per_s"), ".1f"),
                   fmt(r.get("speedup"), ".2f", "x"), fmt(r.get("mean_accepted_length")),
                   baseline_cell(r)] for r in runs_rec]),
        "## Step costs measured by the adaptive policy", step_cost_table(runs)]
        + (["## Learning curves", curve_table] if curves else [])
        + ["## Plots", "\n".join([f"![{p.stem}]({p.name})" for p in pngs]
                                 + [f"- {name}: not drawn, {why}" for name, why in skipped.items()])])
    (out / "report.md").write_text(text + "\n")
    return {"runs": len(runs), "out": str(out), "files": [str(out / n) for n in files] + [str(p) for p in pngs],
            "not_drawn": skipped, "failed": [str(folder) for folder, _ in failed]}


def baseline_cell(rec: dict) -> str:
    """How a run's baseline was timed, and where it is: ``interleaved: <run>/baseline``."""
    source = str(rec.get("baseline_source") or "")
    where = source.split(": ", 1)[1] if ": " in source else ""
    return f"{rec.get('baseline_method')}: {where}" if where else str(rec.get("baseline_method"))


def run_folder(path: str) -> str:
    """A run's folder name; a baseline timed with a run: ``<run folder>/baseline``."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.name == "baseline" else p.name


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m specdec.report", description=__doc__.split("\n")[0])
    ap.add_argument("dirs", nargs="+", help="run or sweep directories (searched recursively)")
    ap.add_argument("--out", default=None, help="output directory (default: <first DIR>/report)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    result = report(args.dirs, args.out, progress=not args.no_progress)
    print(f"{result['runs']} runs -> {result['out']}")
    print((Path(result["out"]) / "report.md").read_text())


if __name__ == "__main__":
    main()

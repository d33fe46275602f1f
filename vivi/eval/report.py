"""Tables and plots of evaluation results, and the comparison of several runs.

* :func:`write_results_markdown` -- one evaluation's ``results.md``: per task (median and every
  repetition), per group, and the plain mean over tasks (VTAB's score), in percent.
* :func:`compare` -- ``vivi report OUT_A OUT_B ...``: a markdown + JSON table of every run per task
  (median over repetitions), group means and means; each run after the first is tested against
  the first (the baseline) per task with a two-sided Welch t-test over the repetitions (scipy,
  ``equal_var=False``; Object-centric §4.2 uses 12 runs and p = 0.05). ``*`` marks p < 0.05; with fewer than
  two repetitions on either side (or zero variance on both) there is no test (``n/a``).
  Two PNG plots (matplotlib, Agg): ``accuracy.png``, per-task accuracy bars ordered by group, and
  ``relative.png``, the per-task relative increase of each run over the baseline in percent
  (like Object-centric Figure 4).
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np

from .suite import GROUPS

__all__ = ["compare", "load_results", "summarize", "welch_test", "write_results_markdown"]

ALPHA = 0.05


def _pct(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _ordered_tasks(tasks: dict[str, dict]) -> list[str]:
    rank = {g: i for i, g in enumerate(GROUPS)}
    return sorted(tasks, key=lambda n: (rank.get(tasks[n]["group"], len(GROUPS)), list(tasks).index(n)))


def _protocol(results: dict) -> str:
    """The protocol of an evaluation, with the VTAB-1k sweep's selection rule: ``vtab1k (setting
    chosen per task)`` or ``... for the suite``."""
    select = (results.get("result_settings") or {}).get("select")
    if results.get("protocol") == "vtab1k" and select in ("task", "suite"):
        return f"vtab1k (setting chosen {'per task' if select == 'task' else 'for the suite'})"
    return str(results.get("protocol"))


def write_results_markdown(results: dict, path: str | Path) -> Path:
    """``results.md`` of one evaluation (see the module docstring)."""
    tasks = results["tasks"]
    lines = [f"# {_protocol(results)} evaluation of `{results['checkpoint']}`", "",
             "| task | group | chance (%) | median top-1 (%) | repetitions (%) | selected |",
             "|---|---|---|---|---|---|"]
    for name in _ordered_tasks(tasks):
        t = tasks[name]
        reps = ", ".join(_pct(a) for a in t["test_accuracy"])
        selected = "; ".join(", ".join(f"{k}={v:g}" for k, v in s.items()) for s in t["selected"] if s)
        lines.append(f"| {name} | {t['group']} | {_pct(t.get('chance'))} | {_pct(t['median'])} | {reps} | {selected} |")
    lines += ["", "| group | mean of medians (%) |", "|---|---|"]
    lines += [f"| {g} | {_pct(v)} |" for g, v in results["groups"].items()]
    lines += [f"| **mean over tasks** | **{_pct(results['mean'])}** |", ""]
    path = Path(path)
    path.write_text("\n".join(lines))
    return path


def load_results(folder: str | Path) -> dict:
    path = Path(folder) / "results.json" if Path(folder).is_dir() else Path(folder)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run `vivi eval --out {folder}` to the end first")
    try:
        results = json.loads(path.read_text())
        for task in results["tasks"].values():
            task["group"], task["test_accuracy"]      # what a comparison reads
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path} is not the results.json of a `vivi eval` run ({error.__class__.__name__}: "
                         f"{error}); pass the --out folder of a finished evaluation") from None
    return results


def summarize(tasks: dict[str, dict]) -> dict:
    """Group means and the plain mean over tasks of the per-task medians (VTAB's score)."""
    medians = {name: float(np.median(t["test_accuracy"])) for name, t in tasks.items()}
    groups: dict[str, list[float]] = {}
    for name, t in tasks.items():
        groups.setdefault(t["group"], []).append(medians[name])
    return {"groups": {g: float(np.mean(v)) for g, v in groups.items()},
            "mean": float(np.mean(list(medians.values())))}


def welch_test(a, b) -> float | None:
    """Two-sided Welch t-test p-value of two samples, None where it is undefined."""
    from scipy.stats import ttest_ind
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2 or (a.var() == 0 and b.var() == 0):
        return None
    with warnings.catch_warnings():       # near-identical samples: scipy warns, the p-value is still usable
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(ttest_ind(a, b, equal_var=False).pvalue)
    return None if math.isnan(p) else p


def _labels(folders: list[Path]) -> list[str]:
    names = [f.name or str(f) for f in folders]
    return names if len(set(names)) == len(names) else [str(f) for f in folders]


def compare(folders: list[str | Path], out: str | Path) -> dict:
    """Compare evaluation outputs; writes ``report.md``, ``report.json``, ``accuracy.png``,
    ``relative.png`` to ``out`` and returns the report dict. The first folder is the baseline."""
    if len(folders) < 1:
        raise ValueError("vivi report needs at least one evaluation folder")
    folders = [Path(f) for f in folders]
    runs = [load_results(f) for f in folders]
    labels = _labels(folders)
    base = runs[0]
    names = _ordered_tasks(base["tasks"])
    for label, run in zip(labels, runs):
        missing = [n for n in names if n not in run["tasks"]]
        if missing:
            raise ValueError(f"{label} has no result for task(s) {missing}: compare runs on the same suite")
    # Group means and means over the compared tasks (the baseline's), whatever else a run holds.
    extra = {label: sorted(set(run["tasks"]) - set(names)) for label, run in zip(labels, runs)}
    summaries = {label: summarize({n: {**run["tasks"][n], "group": base["tasks"][n]["group"]} for n in names})
                 for label, run in zip(labels, runs)}
    protocols = {label: _protocol(run) for label, run in zip(labels, runs)}
    table = []
    for name in names:
        row = {"task": name, "group": base["tasks"][name]["group"], "chance": base["tasks"][name].get("chance"),
               "runs": []}
        for label, run in zip(labels, runs):
            values = run["tasks"][name]["test_accuracy"]
            p = welch_test(values, base["tasks"][name]["test_accuracy"]) if run is not base else None
            median, baseline = float(np.median(values)), float(np.median(base["tasks"][name]["test_accuracy"]))
            row["runs"].append({"run": label, "median": median, "values": values, "p_value": p,
                                "significant": p is not None and p < ALPHA,
                                "relative_increase": (median - baseline) / baseline if baseline > 0 else None})
        table.append(row)
    report = {"runs": labels, "baseline": labels[0], "alpha": ALPHA, "tasks": table,
              "groups": {label: summaries[label]["groups"] for label in labels},
              "mean": {label: summaries[label]["mean"] for label in labels},
              "protocols": protocols, "not_compared": {label: e for label, e in extra.items() if e}}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    _write_report_markdown(report, out / "report.md")
    _plot_accuracy(report, out / "accuracy.png")
    if len(labels) > 1:
        _plot_relative(report, out / "relative.png")
    return report


def _write_report_markdown(report: dict, path: Path) -> None:
    runs = report["runs"]
    lines = [f"# Comparison (baseline: {report['baseline']})", "",
             f"Median top-1 (%) over repetitions; `*` = differs from the baseline, two-sided Welch t-test "
             f"p < {report['alpha']} (p in brackets; n/a with fewer than two repetitions). Group means and "
             "means are over the tasks of this table. Chance: the test accuracy of always guessing the most "
             "frequent class.", ""]
    if len(set(report["protocols"].values())) > 1:
        lines += ["**The runs were evaluated with different protocols** (" + ", ".join(
            f"{run}: {protocol}" for run, protocol in report["protocols"].items()) + "): their numbers are not "
            "comparable as the same measurement.", ""]
    for run, tasks in report["not_compared"].items():
        lines += [f"Not in the baseline, so not compared: {run}'s {', '.join(tasks)}.", ""]
    lines += ["| task | group | chance | " + " | ".join(runs) + " |", "|---|---|---|" + "---|" * len(runs)]
    for row in report["tasks"]:
        cells = []
        for r in row["runs"]:
            cell = _pct(r["median"])
            if r["run"] != report["baseline"]:
                cell += "*" if r["significant"] else ""
                cell += f" (p={r['p_value']:.3g})" if r["p_value"] is not None else " (n/a)"
            cells.append(cell)
        lines.append(f"| {row['task']} | {row['group']} | {_pct(row['chance'])} | " + " | ".join(cells) + " |")
    groups = [g for g in GROUPS if any(g in report["groups"][r] for r in runs)]
    for g in groups:
        lines.append(f"| *{g}* | | | " + " | ".join(_pct(report["groups"][r].get(g)) for r in runs) + " |")
    lines.append("| **mean** | | | " + " | ".join(f"**{_pct(report['mean'][r])}**" for r in runs) + " |")
    path.write_text("\n".join(lines) + "\n")


_GROUP_COLOURS = {"natural": "tab:green", "specialized": "tab:orange", "structured": "tab:blue"}


def _plot_accuracy(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows, runs = report["tasks"], report["runs"]
    x = np.arange(len(rows))
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(rows) * len(runs) + 2), 4))
    for i, run in enumerate(runs):
        ax.bar(x + (i - (len(runs) - 1) / 2) * width, [100 * r["runs"][i]["median"] for r in rows], width, label=run)
    ax.set_xticks(x, [r["task"] for r in rows], rotation=45, ha="right")
    for tick, row in zip(ax.get_xticklabels(), rows):
        tick.set_color(_GROUP_COLOURS.get(row["group"], "black"))
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("per-task accuracy (task names coloured by group: natural / specialized / structured)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_relative(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows, runs = report["tasks"], report["runs"]
    others = runs[1:] or runs[:1]
    fig, axes = plt.subplots(len(others), 1, figsize=(max(6, 0.5 * len(rows) + 2), 3 * len(others)), squeeze=False)
    for ax, run in zip(axes[:, 0], others):
        i = runs.index(run)
        values = [100 * (r["runs"][i]["relative_increase"] or 0.0) for r in rows]
        ax.bar(range(len(rows)), values, color=[_GROUP_COLOURS.get(r["group"], "grey") for r in rows])
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(rows)), [r["task"] + ("*" if r["runs"][i]["significant"] else "") for r in rows],
                      rotation=45, ha="right")
        ax.set_ylabel("relative increase (%)")
        ax.set_title(f"{run} over {report['baseline']} (* = p < {report['alpha']})", fontsize=9)
        from matplotlib.patches import Patch
        groups = dict.fromkeys(r["group"] for r in rows)
        ax.legend(handles=[Patch(color=_GROUP_COLOURS.get(g, "grey"), label=g) for g in groups], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

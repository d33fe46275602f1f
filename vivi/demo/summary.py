"""The demo's results: per method, the mean over seeds (and its spread) of every task, group and
the mean over tasks; the papers' ordering tested pair by pair; a table, a report and plots.

Significance: for each neighbouring pair of the claimed order (``methods.CLAIMED_ORDER``) the
per-seed means over tasks are compared with a one-sided Welch t-test (``vivi.eval.report.welch_test``
halved in the direction of the claim), alpha = 0.05; for the ">=" pair (objects over VIVI) the
opposite one-sided test says whether a shortfall is significant. With one seed there is no test.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vivi.eval.report import ALPHA, compare, welch_test
from vivi.eval.suite import GROUPS

from .methods import AT_LEAST_PAIRS, CLAIMED_ORDER, SCALES, Method


def collect(evals: dict[Method, list[Path]]) -> dict:
    """Per method: per-seed accuracies of every task, of every group and of the mean over tasks."""
    methods = {}
    for method, folders in evals.items():
        runs = [json.loads((f / "results.json").read_text()) for f in folders]
        tasks = {name: {"group": t["group"], "seeds": [r["tasks"][name]["median"] for r in runs],
                        "chance": t.get("chance")} for name, t in runs[0]["tasks"].items()}
        photos = [json.loads((f / "photos" / "results.json").read_text()) for f in folders]
        groups = {g: [r["groups"][g] for r in runs] for g in runs[0]["groups"]}
        methods[method.name] = {"label": method.label, "tasks": tasks, "groups": groups,
                                "mean": [r["mean"] for r in runs], "photos": [p["mean"] for p in photos],
                                "photos_chance": photos[0]["tasks"]["photo-orientation"].get("chance")}
    return methods


def ordering(methods: dict) -> list[dict]:
    """Each neighbouring pair of the claimed order among the methods run: does it hold?"""
    present = [m for m in CLAIMED_ORDER if m in methods]
    out = []
    for low, high in zip(present, present[1:]):
        a, b = methods[low]["mean"], methods[high]["mean"]
        diff = float(np.mean(b) - np.mean(a))
        at_least = (low, high) in AT_LEAST_PAIRS
        p = welch_test(b, a)
        p_one = None if p is None else (p / 2 if diff > 0 else 1 - p / 2)
        p_worse = None if p is None else 1 - p_one       # one-sided: high is worse than low
        out.append({"low": low, "high": high, "relation": ">=" if at_least else ">", "difference": diff,
                    "holds": diff >= 0 if at_least else diff > 0, "p_value": p_one,
                    "significant": p_one is not None and p_one < ALPHA,
                    "p_worse": p_worse, "significantly_worse": p_worse is not None and p_worse < ALPHA})
    return out


def _cell(values: list[float]) -> str:
    v = 100 * np.asarray(values)
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}" if len(v) > 1 else f"{v.mean():.1f}"


def table(methods: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows (strings, %) of the results table: mean, groups, then every task."""
    first = next(iter(methods.values()))
    groups = [g for g in GROUPS if g in first["groups"]]
    tasks = sorted(first["tasks"], key=lambda n: (GROUPS.index(first["tasks"][n]["group"])
                                                  if first["tasks"][n]["group"] in GROUPS else len(GROUPS)))
    header = ["method", "mean", *groups, *tasks, PHOTOS_COLUMN]
    rows = [[m["label"], _cell(m["mean"]), *(_cell(m["groups"][g]) for g in groups),
             *(_cell(m["tasks"][t]["seeds"]) for t in tasks), _cell(m["photos"])] for m in methods.values()]
    chance = [first["tasks"][t].get("chance") for t in tasks]
    if None not in chance and first.get("photos_chance") is not None:
        # what an encoder that learned nothing scores at best: the most frequent class of each test set
        by_group = [[c for t, c in zip(tasks, chance) if first["tasks"][t]["group"] == g] for g in groups]
        rows.append(["chance", _cell([np.mean(chance)]), *(_cell([np.mean(c)]) for c in by_group),
                     *(_cell([c]) for c in chance), _cell([first["photos_chance"]])])
    return header, rows


# The real-photograph check's column: not one of the world's tasks, so not in the mean
PHOTOS_COLUMN = "real photos*"
PHOTOS_NOTE = ("*real photos: which way up a piece of a real photograph is (4 classes; docs/eval.md, \"Task "
               "sources\"), a check outside the synthetic world, not in the mean. chance: always guessing a test "
               "set's most frequent class.")


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def format_ordering(checks: list[dict], methods: dict) -> list[str]:
    lines = []
    for c in checks:
        verdict = "holds" if c["holds"] else "does NOT hold"
        if c["p_value"] is None:
            test = f"no significance test (one seed; `vivi demo --full` runs {SCALES['full'].seeds})"
        else:
            verdict_p = "significant" if c["significant"] else "not significant"
            test = f"one-sided Welch p = {c['p_value']:.3g} ({verdict_p})"
            if c["relation"] == ">=" and not c["holds"]:
                test += (f"; worse with p = {c['p_worse']:.3g}: "
                         + ("significantly worse" if c["significantly_worse"] else "not significantly worse"))
        lines.append(f"{methods[c['high']]['label']} {c['relation']} {methods[c['low']]['label']}: {verdict} "
                     f"({100 * c['difference']:+.1f} points on the mean; {test})")
    return lines


def one_seed_caveat(checks: list[dict]) -> str | None:
    """What a run without significance tests cannot tell (None when the ordering was tested)."""
    if not checks or any(c["p_value"] is not None for c in checks):
        return None
    full = SCALES["full"]
    return ("One seed: a difference of a point or two on the mean is within the spread between seeds; "
            f"`vivi demo --full` ({full.steps} steps, {full.seeds} seeds) tests every step of the ordering.")


def plot_means(methods: dict, path: Path) -> Path:
    """Mean over tasks and per group, one bar per method, error bars = std over seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    first = next(iter(methods.values()))
    columns = ["mean", *[g for g in GROUPS if g in first["groups"]]]
    x = np.arange(len(columns))
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(columns), 4))
    for i, m in enumerate(methods.values()):
        values = [np.asarray(m["mean"])] + [np.asarray(m["groups"][g]) for g in columns[1:]]
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, [100 * v.mean() for v in values], width,
               yerr=[100 * v.std(ddof=1) if len(v) > 1 else 0 for v in values], capsize=3, label=m["label"])
    ax.set_xticks(x, ["mean over tasks", *columns[1:]])
    ax.set_ylabel("linear-probe top-1 (%)")
    seeds = len(first["mean"])
    ax.set_title(f"synthetic world, {seeds} seed{'s' if seeds > 1 else ''} per method"
                 + (" (bars: std over seeds)" if seeds > 1 else ""), fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_method_results(methods: dict, evals_dir: Path) -> list[Path]:
    """One ``results.json`` per method with the seeds as repetitions, the input of ``vivi report``."""
    folders = []
    for name, m in methods.items():
        folder = evals_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        tasks = {t: {"group": v["group"], "median": float(np.median(v["seeds"])), "test_accuracy": v["seeds"]}
                 for t, v in m["tasks"].items()}
        (folder / "results.json").write_text(json.dumps(
            {"checkpoint": m["label"], "protocol": "linear", "tasks": tasks,
             "groups": {g: float(np.mean(v)) for g, v in m["groups"].items()}, "mean": float(np.mean(m["mean"]))},
            indent=1))
        folders.append(folder)
    return folders


def _variant_lines(settings: dict) -> list[str]:
    """What a run changed from the default world and training size (``--world``, ``--train-size``)."""
    lines = []
    if settings.get("world"):
        lines.append("World settings: " + ", ".join(f"`{k}={v}`" for k, v in settings["world"].items()) + ".")
    if settings.get("train_size"):
        lines.append(f"Training crops of {settings['train_size']} px (the presets' default is 32).")
    return lines


def write_report(methods: dict, out: Path, *, settings: dict, timings: dict) -> dict:
    """``report.md``, ``results.json``, ``means.png`` and the per-task plots of ``vivi report``."""
    out.mkdir(parents=True, exist_ok=True)
    checks = ordering(methods)
    header, rows = table(methods)
    compare(write_method_results(methods, out.parent / "evals" / "methods"), out / "per-task")
    plot_means(methods, out / "means.png")
    summary = {"settings": settings, "methods": methods, "ordering": checks, "timings": timings}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    seeds = settings["seeds"]
    md = ["# vivi demo: what the video hierarchy adds, on the synthetic world", "",
          f"{settings['videos']} videos x {settings['seconds']:g} s, {settings['steps']} training steps per method, "
          f"{seeds} seed{'s' if seeds > 1 else ''} per method; linear probe on the frozen encoder "
          f"({settings['eval_resolution']} px, C picked on val200, {settings['test_size']} test images per task).",
          *_variant_lines(settings), "",
          "Top-1 accuracy (%)" + (", mean ± std over seeds" if seeds > 1 else "") + ":", "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += ["", PHOTOS_NOTE]
    caveat = one_seed_caveat(checks)
    md += ["", "## The papers' ordering", "", *[f"- {line}" for line in format_ordering(checks, methods)], "",
           *([caveat, ""] if caveat else []), "## Where the time went", "", "| stage | seconds |", "|---|---|"]
    md += [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    md += ["", "![means](means.png)", "", "Per task: [per-task/report.md](per-task/report.md), "
           "![accuracy](per-task/accuracy.png)", "", "Frames the methods learned from, with the world's boxes: "
           "![contact sheet](contact_sheet.png)", ""]
    (out / "report.md").write_text("\n".join(md))
    return summary

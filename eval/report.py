"""The eval report: one row per method, written as JSON, Markdown and PNG plots.

Row figures are computed from the run's own records and events (pure functions here);
plots need matplotlib (the ``[eval]`` extra) and are skipped, with a note, without it.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from symoe_agents.events import Event
from symoe_agents.summary import RunSummary
from symoe_agents.records import QuestionResult


def method_row(name: str, results: list[QuestionResult], events: list[Event], wall_s: float,
               skill_calls: int, tokens: int, layers: int = 1) -> dict[str, Any]:  # fmt: skip
    """``layers``: Mixture-of-Agents proposer layers; each record keeps only the last layer's
    answers, but every layer made its calls. The outcome columns (aggregator answers that
    did not parse, failed aggregator calls, fallbacks used, aggregations skipped because the
    experts agreed, calls cut off at max_tokens) are counted as the run summary counts them."""
    n = len(results)
    outcome = RunSummary()
    for r in results:
        outcome.count_outcome(r)

    def acc(rs: list[QuestionResult]) -> float | None:
        return sum(1 for r in rs if r.correct) / len(rs) if rs else None

    by_bench: dict[str, list[QuestionResult]] = {}
    by_cat: dict[str, list[QuestionResult]] = {}
    experts_by_cat: dict[str, Counter[str]] = {}
    for r in results:
        by_bench.setdefault(r.id.split(":", 1)[0], []).append(r)
        cat = r.category or r.id.split(":", 1)[0]
        by_cat.setdefault(cat, []).append(r)
        experts_by_cat.setdefault(cat, Counter()).update(r.experts)
    cost = sum(r.usage.cost_usd for r in results)
    calls = skill_calls + sum(layers * len(r.expert_answers) + (1 if r.aggregator_answer else 0) for r in results)
    return {
        "method": name,
        "questions": n,
        "accuracy": acc(results),
        "by_benchmark": {b: acc(rs) for b, rs in sorted(by_bench.items())},
        "by_category": {c: acc(rs) for c, rs in sorted(by_cat.items())},
        "unanswered": outcome.unanswered,
        "aggregator_unparsable": outcome.aggregator_unparsable,
        "aggregator_failed": outcome.aggregator_failed,
        "fallbacks": outcome.fallbacks_used,
        "aggregations_skipped": outcome.aggregations_skipped,
        "truncated_calls": sum(outcome.truncated.values()),
        "calls_per_question": calls / n if n else 0.0,
        "tokens_per_question": tokens / n if n else 0.0,
        # what the method paid in this run (costs.py): USD per 1,000 questions, device time per question
        "cost_usd": cost,
        "cost_per_1k_usd": 1000 * cost / n if n else 0.0,
        "device_s_per_question": sum(r.usage.device_s for r in results) / n if n else 0.0,
        "model_loads": sum(1 for e in events if e.kind == "server_start"),
        "wall_s": round(wall_s, 2),
        "experts_by_category": {c: dict(cnt) for c, cnt in sorted(experts_by_cat.items())},
    }


_OUTCOMES = ("unanswered", "aggregator_unparsable", "aggregator_failed", "fallbacks", "aggregations_skipped", "truncated_calls")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    benches = sorted({b for r in rows for b in r["by_benchmark"]})
    head = ["method", "questions", "accuracy %", *[f"{b} %" for b in benches], "no answer", "agg. unparsable",
            "agg. failed", "fallbacks", "agg. skipped", "truncated", "calls/q", "tokens/q", "USD/1k q", "device s/q", "model loads", "wall s"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(head) - 1)) + " |"]
    for r in rows:
        cells = [r["method"], str(r["questions"]), _pct(r["accuracy"]), *[_pct(r["by_benchmark"].get(b)) for b in benches],
                 *[str(r[c]) for c in _OUTCOMES], f"{r['calls_per_question']:.1f}", f"{r['tokens_per_question']:.0f}",
                 f"{r['cost_per_1k_usd']:.4f}", f"{r['device_s_per_question']:.2f}", str(r["model_loads"]), f"{r['wall_s']:.1f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    cats = sorted({c for r in rows for c in r["by_category"]})
    if len(cats) > 1:
        lines += ["", "Accuracy % by category:", "", "| method | " + " | ".join(cats) + " |", "| --- |" + " ---: |" * len(cats)]
        for r in rows:
            lines.append(f"| {r['method']} | " + " | ".join(_pct(r["by_category"].get(c)) for c in cats) + " |")
    return "\n".join(lines) + "\n"


def plots(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = [r["method"] for r in rows]
    ax.bar(names, [100 * (r["accuracy"] or 0) for r in rows], color="#4C72B0")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy by method")
    ax.set_ylim(0, 100)
    fig.tight_layout()
    path = out_dir / "accuracy.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    if any(r["cost_per_1k_usd"] or r["device_s_per_question"] for r in rows):
        # priced: USD per 1,000 questions; unpriced local models: device-seconds per question
        priced = any(r["cost_per_1k_usd"] for r in rows)
        key, label = ("cost_per_1k_usd", "USD per 1,000 questions") if priced else ("device_s_per_question", "device-seconds per question")
        fig, ax = plt.subplots(figsize=(6, 4))
        points = [(r[key], 100 * (r["accuracy"] or 0)) for r in rows]
        width = max(x for x, _ in points) or 1.0
        top = max(y for _, y in points)
        for i, (r, (x, y)) in enumerate(zip(rows, points)):
            ax.scatter([x], [y], color="#4C72B0")
            # methods of like cost and accuracy would print their names over each other: each
            # name goes a line above those of the points already labelled next to it
            near = sum(1 for px, py in points[:i] if abs(px - x) < 0.08 * width and abs(py - y) < 0.05 * max(top, 1))
            ax.annotate(r["method"], (x, y), textcoords="offset points", xytext=(5, 4 + 10 * near), fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy (%)")
        ax.set_title("Accuracy against cost")
        ax.set_xlim(left=0)
        ax.set_ylim(0, max(top * 1.25, top + 8))  # room for the stacked names
        fig.tight_layout()
        path = out_dir / "accuracy_vs_cost.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    sym = next((r for r in rows if r["method"] == "symoe"), None)
    if sym and sym["experts_by_category"]:
        cats = list(sym["experts_by_category"])
        experts = sorted({e for c in cats for e in sym["experts_by_category"][c]})
        fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(cats) + 3), 3.5))
        bottom = [0.0] * len(cats)
        for e in experts:
            vals = [sym["experts_by_category"][c].get(e, 0) / max(1, sum(sym["experts_by_category"][c].values())) for c in cats]
            ax.bar(cats, vals, bottom=bottom, label=e)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_ylabel("share of recruited experts")
        ax.set_title("Experts recruited per category (symoe)")
        ax.legend(fontsize=7)
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
        fig.tight_layout()
        path = out_dir / "experts_by_category.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_report(rows: list[dict[str, Any]], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out_dir / "report.md").write_text(markdown(rows))
    files = {"json": out_dir / "report.json", "markdown": out_dir / "report.md"}
    for p in plots(rows, out_dir):
        files[p.stem] = p
    return files

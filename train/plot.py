"""python -m train.plot RUN_DIR [--out FILE]: every metric of RUN_DIR/metrics.jsonl against step, as one PNG.

What gets a panel is decided by `panels(records)`, a pure function: constant series are listed in a note instead,
series equal to one another share one line (titled with every name), bookkeeping keys are left out, and related
series (losses, rewards, timings, chosen vs rejected, ...) share a panel with a legend."""
import argparse
import json
import math
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

# Keys that index the records rather than measure the run.
BOOKKEEPING = ("step", "epoch", "time")
# Up to this many points a line gets big markers (one or two points would be invisible as a bare line); up to
# MANY_POINTS small ones; beyond that the line alone.
FEW_POINTS, MANY_POINTS = 10, 60
# A positive series whose largest value is at least this many times its smallest may get a log axis (wants_log).
LOG_SPAN = 100.0
COLS = 3
NONFINITE_WORDS = {"nan": math.nan, "inf": math.inf, "+inf": math.inf, "-inf": -math.inf,
                   "infinity": math.inf, "+infinity": math.inf, "-infinity": -math.inf}


class PlotError(Exception):
    """A run directory that cannot be plotted; main reports it in one line."""


@dataclass(frozen=True)
class Line:
    names: tuple[str, ...]          # several names when the series are equal at every step

    @property
    def label(self) -> str:
        return " = ".join(self.names)


@dataclass(frozen=True)
class Panel:
    title: str
    lines: tuple[Line, ...]
    log: bool = False
    markers: bool = False           # few points: draw them, not just a line through them
    points: int = 0                 # the longest line's number of steps

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for line in self.lines for n in line.names)


# ---- reading -----------------------------------------------------------------------------------------------------

def read_records(path: Path) -> list[dict]:
    """The JSON objects of a metrics.jsonl. A half-written last line (a run killed mid-write) is skipped."""
    path = Path(path)
    if not path.is_file():
        raise PlotError(f"{path.parent}: no metrics.jsonl here (is this a run directory like out/pretrain_512?)")
    records = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    if not records:
        raise PlotError(f"{path}: no records to plot (the file is empty)")
    return records


def as_number(v) -> float | None:
    """A metric value as a float (non-finite included), or None when it is no number at all. null stands for a
    non-finite value, since that is how the metrics log writes one."""
    if v is None:
        return math.nan
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        return NONFINITE_WORDS.get(v.strip().lower())
    return None


def series(records: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """Each numeric key's (step, value) points, in first-seen key order. A record without a step counts as the
    step after the previous one."""
    out: dict[str, list[tuple[float, float]]] = {}
    step = 0.0
    for rec in records:
        s = as_number(rec.get("step"))
        step = s if s is not None and math.isfinite(s) else step + 1
        for key, v in rec.items():
            x = as_number(v)
            if key not in BOOKKEEPING and x is not None:
                out.setdefault(key, []).append((step, x))
    return out


def epoch_starts(records: list[dict]) -> list[float]:
    """The first step of every epoch after the first; empty for a single-epoch run."""
    starts, last = [], None
    for rec in records:
        e, s = as_number(rec.get("epoch")), as_number(rec.get("step"))
        if e is None or s is None or not (math.isfinite(e) and math.isfinite(s)):
            continue
        if last is not None and e != last:
            starts.append(s)
        last = e
    return starts


# ---- deciding the panels -----------------------------------------------------------------------------------------

def finite(points) -> list[float]:
    return [v for _, v in points if math.isfinite(v)]


def is_constant(points) -> bool:
    """At least two values, every one finite and equal (to float rounding). A series with a non-finite value is
    never constant: the non-finite value is news."""
    vals = [v for _, v in points]
    if len(vals) < 2 or len(finite(points)) < len(vals):   # a one-record run still gets its panels
        return False
    # Relative to the values' size (float32 rounding), so a tiny lr that moves still counts as moving.
    return max(vals) - min(vals) <= 1e-7 * max(abs(v) for v in vals)


def _equal(x: float, y: float) -> bool:
    if math.isfinite(x) and math.isfinite(y):
        return math.isclose(x, y, rel_tol=1e-6)
    return x == y or (math.isnan(x) and math.isnan(y))


def same_series(a, b) -> bool:
    """The same steps with equal values (non-finite where the other is non-finite)."""
    return [s for s, _ in a] == [s for s, _ in b] and all(_equal(x, y) for (_, x), (_, y) in zip(a, b))


def merge_duplicates(data: dict) -> list[tuple[str, ...]]:
    """Names grouped by equal series, in first-seen order; each group's first name is its representative."""
    groups: list[list[str]] = []
    for name, points in data.items():
        for g in groups:
            if same_series(data[g[0]], points):
                g.append(name)
                break
        else:
            groups.append([name])
    # "loss" leads its group, so the total is what a duplicate panel is named after.
    return [tuple(sorted(g, key=lambda n: n != "loss")) for g in groups]


def _is_loss(n):
    return n in ("loss", "ce") or (n.endswith("_loss") and n != "aux_loss")


# The panels that gather several series: (title, does a name belong). First match wins; a name no rule takes
# gets a panel of its own. aux_loss stays apart from the losses: it is orders of magnitude smaller and would lie
# flat along their axis.
GROUPS = (
    ("seconds per step", lambda n: n.endswith("_s") and n != "tokens_per_s"),   # before "reward": reward_s is a time
    ("loss", _is_loss),
    ("reward", lambda n: n == "reward" or n.startswith("reward_")),
    ("chosen vs rejected", lambda n: n.startswith(("chosen_", "rejected_")) or n.endswith("margin")),
    ("KL", lambda n: n in ("kl", "approx_kl") or n.startswith("kl_")),
    ("advantage", lambda n: n.startswith("advantage_")),
    ("length (tokens)", lambda n: n.endswith("_len")),
)


# Training-health panels come last, in this order, after the panels about what the model learns.
TAIL = ("seconds per step", "grad_norm", "loss_scale", "lr", "tokens_per_s")


def rank(title: str) -> int:
    heads = [t for t, _ in GROUPS if t not in TAIL]
    if title in heads:
        return heads.index(title)
    return 100 + TAIL.index(title) if title in TAIL else 50


def group_of(name: str, present: set[str]) -> str | None:
    # reward_* are reward components only beside a "reward"; in DPO, reward_margin and reward_accuracy are not.
    for title, belongs in GROUPS:
        if belongs(name) and not (title == "reward" and "reward" not in present):
            return title
    return None


def make_panel(title: str, lines: list[Line], data: dict) -> Panel:
    vals = [v for line in lines for v in finite(data[line.names[0]])]
    points = max(len(data[line.names[0]]) for line in lines)
    return Panel(title=lines[0].label if len(lines) == 1 else title, lines=tuple(lines), log=wants_log(vals),
                 markers=points <= MANY_POINTS, points=points)


def wants_log(vals: list[float]) -> bool:
    """Positive values spanning decades, the bulk of them too (90th percentile over 20 times the 10th): a noisy
    series with values near zero (uniform on [0, 1) has a ratio near 9) reads better on a linear axis."""
    if not vals or min(vals) <= 0 or max(vals) / min(vals) < LOG_SPAN:
        return False
    v = sorted(vals)
    lo, hi = v[int(0.1 * (len(v) - 1))], v[math.ceil(0.9 * (len(v) - 1))]
    return hi / lo >= 20


def panels(records: list[dict]) -> list[Panel]:
    """The panels of a run's plot: one per group of related series, one per other series; none for constants."""
    data = series(records)
    kept = [g for g in merge_duplicates(data) if not is_constant(data[g[0]])]
    present = {n for g in kept for n in g}
    order: dict[str, list[Line]] = {}
    for names in kept:
        key = group_of(names[0], present) or names[0]
        order.setdefault(key, []).append(Line(names))
    return [make_panel(title, lines, data) for title, lines in sorted(order.items(), key=lambda kv: rank(kv[0]))]


def constants(records: list[dict]) -> dict[str, float]:
    """Each constant series' name and value."""
    data = series(records)
    return {n: pts[0][1] for n, pts in data.items() if is_constant(pts)}


# ---- drawing -----------------------------------------------------------------------------------------------------

def _note(consts: dict[str, float], width: int) -> str:
    """The figure's footnote, e.g. 'constant: a, b: 0; c: 16' (names of equal value together)."""
    if not consts:
        return ""
    by_value: dict[float, list[str]] = {}
    for name, v in consts.items():
        by_value.setdefault(v, []).append(name)
    text = "constant: " + "; ".join(f"{', '.join(names)}: {v:.4g}" for v, names in by_value.items())
    return "\n".join(textwrap.wrap(text, width))


def draw_line(ax, points, label: str, panel: Panel):
    xs = [s for s, _ in points]
    ys = [v if math.isfinite(v) else math.nan for _, v in points]   # nan breaks the line at a divergence
    size = 5 if panel.points <= FEW_POINTS else 2.5
    ax.plot(xs, ys, lw=1.2, label=label, marker="o" if panel.markers else None, ms=size)


def mark_nonfinite(ax, steps: list[float], legend: bool):
    """Red crosses at the top of the panel, whatever the axis range, so a divergence cannot hide."""
    ax.plot(steps, [0.97] * len(steps), "x", color="red", ms=7, mew=2, clip_on=False,
            transform=ax.get_xaxis_transform(), label="non-finite" if legend else None)


def draw_panel(ax, panel: Panel, data: dict, epochs: list[float]):
    from matplotlib.ticker import MaxNLocator
    for line in panel.lines:
        draw_line(ax, data[line.names[0]], line.label, panel)
    bad = sorted({s for line in panel.lines for s, v in data[line.names[0]] if not math.isfinite(v)})
    if bad:
        mark_nonfinite(ax, bad, legend=len(panel.lines) > 1)
    for s in epochs:
        ax.axvline(s, color="gray", lw=0.8, alpha=0.35, ls="--")
    if panel.log:
        ax.set_yscale("log")
    else:  # an offset ("1e-7+6.93e-1") sits where the title is and is hard to read; plain ticks say the same
        ax.ticklabel_format(axis="y", useOffset=False)
    title = panel.title + (f"  (non-finite at {len(bad)} step{'s' * (len(bad) > 1)})" if bad else "")
    ax.set_title("\n".join(textwrap.wrap(title, 38)), fontsize=9, color="red" if bad else "black")
    ax.set_xlabel("step", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if len(panel.lines) > 1:
        ax.legend(fontsize=7, loc="best", framealpha=0.7)


def plot(run_dir: Path, out: Path | None = None) -> Path:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError("train.plot needs matplotlib: pip install 'minimind-jax[plot]'") from None
    run_dir = Path(run_dir)
    records = read_records(run_dir / "metrics.jsonl")
    data, ps, epochs = series(records), panels(records), epoch_starts(records)
    cols = 2 if len(ps) == 4 else max(1, min(COLS, len(ps)))   # 2x2 rather than a row of three and one
    rows = max(1, math.ceil(len(ps) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.3 * cols, 2.9 * rows + 0.8), squeeze=False, layout="constrained")
    for ax, panel in zip(axes.flat, ps):
        draw_panel(ax, panel, data, epochs)
    for ax in list(axes.flat)[len(ps):]:
        ax.axis("off")
    if not ps:
        axes.flat[0].text(0.5, 0.5, "no metric changes over the run", ha="center", va="center", fontsize=10)
    steps = sorted({s for pts in data.values() for s, _ in pts})
    span = f"steps {steps[0]:g}-{steps[-1]:g}, {len(records)} records" if steps else f"{len(records)} records"
    fig.suptitle(f"{run_dir.resolve().name}  ({span}{f', {len(epochs) + 1} epochs' if epochs else ''})",
                 fontsize=11)
    note = _note(constants(records), 45 * cols)
    if note:
        fig.supxlabel(note, fontsize=8, color="dimgray")
    out = Path(out) if out else run_dir / "metrics.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    try:
        print(plot(a.run_dir, a.out))
    except PlotError as e:
        print(f"train.plot: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

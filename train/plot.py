"""python -m train.plot RUN_DIR [--out FILE]: every metric of RUN_DIR/metrics.jsonl against step, as one PNG."""
import argparse
import math
import sys
from pathlib import Path

from train.metrics import read


def plot(run_dir: Path, out: Path | None = None) -> Path:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("train.plot needs matplotlib: pip install 'minimind-jax[plot]'")
    records = read(run_dir / "metrics.jsonl")
    keys = [k for k in dict.fromkeys(k for r in records for k in r)
            if k not in ("step", "epoch", "time") and any(isinstance(r.get(k), (int, float)) for r in records)]
    cols = min(3, len(keys)) or 1
    rows = math.ceil(len(keys) / cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        ax.plot(*zip(*pts), lw=1.2)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    out = out or run_dir / "metrics.png"
    fig.savefig(out, dpi=110)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    if not (a.run_dir / "metrics.jsonl").exists():
        sys.exit(f"{a.run_dir}: no metrics.jsonl here (is this a run directory like out/pretrain_512?)")
    print(plot(a.run_dir, a.out))


if __name__ == "__main__":
    main()

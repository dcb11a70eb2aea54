"""metrics.jsonl (one JSON object per logged step), a one-line console summary, optional wandb/swanlab."""
import json
import math
from pathlib import Path


def _clean(v):
    """JSON has no NaN or infinity: they are written as the strings "nan", "inf", "-inf" (never null, which would
    hide a divergence); `read` turns them back into floats."""
    v = float(v) if hasattr(v, "__float__") and not isinstance(v, (int, str)) else v
    return str(v) if isinstance(v, float) and not math.isfinite(v) else v


_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class MetricsLog:
    """Appends to <run dir>/metrics.jsonl. On resume, records past the restored step are dropped first, so the
    file of a resumed run reads like the file of a run that never stopped."""

    def __init__(self, path: Path, resume_step: int = 0, enabled: bool = True, tracker: str | None = None,
                 run_name: str = "", config: dict | None = None, project: str = "minimind-jax"):
        self.path, self.enabled, self.tracker = Path(path), enabled, None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if resume_step and self.path.exists():
            kept = [l for l in self.path.read_text().splitlines() if l and json.loads(l).get("step", 0) <= resume_step]
        self.path.write_text("".join(l + "\n" for l in kept))
        if tracker:
            self.tracker = _open_tracker(tracker, run_name, config or {}, project)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {k: _clean(v) for k, v in record.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tracker is not None:
            self.tracker.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record["step"])


def _open_tracker(name: str, run_name: str, config: dict, project: str):
    """wandb or swanlab when installed (both expose init/log); otherwise say so once and carry on."""
    for module in ([name] if name in ("wandb", "swanlab") else ["wandb", "swanlab"]):
        try:
            lib = __import__(module)
        except ImportError:
            continue
        lib.init(project=project, name=run_name, config=config)
        return lib
    print("warning: --use_wandb given but neither wandb nor swanlab is installed; logging to metrics.jsonl only")
    return None


def read(path: Path) -> list[dict]:
    """The records of a metrics.jsonl, non-finite values as floats again."""
    records = [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]
    return [{k: _NON_FINITE.get(v, v) if isinstance(v, str) else v for k, v in r.items()} for r in records]


def duration(seconds: float) -> str:
    """'42s', '7m05s', '3h12m'."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def summary(record: dict, keys=("loss", "lr", "tokens_per_s"), head: str | None = None) -> str:
    head = head or f"step {record['step']} epoch {record['epoch']}"
    parts = [f"{k} {record[k]:.4g}" for k in keys if isinstance(record.get(k), (int, float))]
    parts += [f"{k} {v:.4g}" for k, v in record.items()
              if k not in keys and k not in ("step", "epoch", "time") and isinstance(v, float)
              and not (k == "nonfinite_streak" and v == 0)]
    return " | ".join([head, *parts])

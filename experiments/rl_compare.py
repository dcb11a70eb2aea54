"""python -m experiments.rl_compare: GRPO (8 generations), SPO as the reference has it and SPO as its paper defines it,
from the same starting model, on the embedded verifiable prompts, for the same number of generated tokens.

Every method decodes 16 completions per step (GRPO: 2 prompts x 8; SPO: 16 prompts x 1) of at most --gen tokens,
with the exact-answer reward (1 if the last number of the response is the answer, else 0), and runs until it has
generated --budget completion tokens (eos included). Reported, per method:
- the training reward per step and against generated tokens (the rollouts' mean reward; SPO-paper's rollouts are
  its prioritised prompts, so this curve is not a like-for-like accuracy);
- greedy accuracy on --eval held-out prompts every --budget / --evals tokens (the like-for-like curve);
- tokens generated per unit of reward gained: the budget over the held-out accuracy gained (and over the gain of
  the training reward, first tenth of the run against the last).
The starting model is <--from> (default: out/full_sft_64, which `python -m train.run --stage all --preset tiny`
writes), else a tiny pretrain + full_sft trained here first (a few minutes). The learning rate is held constant
(the cosine schedule spans 1000 epochs) so that the methods differ only in their objective. SPO-paper starts from
Jeffreys priors; `--init_samples n` gives it offline priors instead, their tokens paid from its budget.

The default budget takes 2 to 4 minutes on 2 CPU cores (plus about 3.5 to train the starting model when there is
none). At that budget the tiny model's gains are within noise (compare them with eval_se); raise `--budget` (the
run time grows in proportion) for longer curves.
"""
import argparse
import itertools
import time
from pathlib import Path

import jax
import numpy as np

from bench.common import environment, peak_rss_mb, print_table, write_json
from losses.rewards import answer_reward
from minimind_jax.data import SAMPLE_DIR, RLAIFDataset
from train.args import parser
from train.engine import train
from train.pipeline import TINY
from train.rollout import decode, sample
from train.run import config_of
from train.run import main as train_main

ROWS_PER_STEP = 16
METHODS = {  # name -> (stage, flags): every one decodes ROWS_PER_STEP completions per step
    "grpo": ("grpo", ["--batch_size", str(ROWS_PER_STEP // 8), "--num_generations", "8"]),
    "spo_minimind": ("spo", ["--batch_size", str(ROWS_PER_STEP)]),
    "spo_paper": ("spo_paper", ["--batch_size", str(ROWS_PER_STEP)]),
}


def starting_model(path: str | None, work: Path) -> Path:
    """The full_sft weights every method starts from: the given or default path, else a tiny model trained now."""
    trained_here = work / "full_sft_64" / "weights.safetensors"
    for candidate in filter(None, [path, "out/full_sft_64/weights.safetensors", trained_here]):
        if Path(candidate).exists():
            return Path(candidate)
    print("no tiny full_sft model found: training one (pretrain + full_sft, the tiny pipeline's settings)")
    for stage in ("pretrain", "full_sft"):
        flags = [x for k, v in TINY[stage].items() for x in (f"--{k}", str(v))]
        train_main(["--stage", stage, "--preset", "tiny", "--out_dir", str(work), "--log_interval", "100", *flags])
    return trained_here


def split_prompts(work: Path, n_train: int, n_eval: int, keep=lambda line: True) -> tuple[Path, Path]:
    """The first n_train rows of the embedded prompts that `keep` accepts to train on (few enough that prompts come
    back, which the per-prompt trackers need), the next n_eval to evaluate on."""
    path = SAMPLE_DIR / "rlaif.jsonl"
    with path.open() as f:
        rows = list(itertools.islice(filter(keep, f), n_train + n_eval))
    if len(rows) < n_train + n_eval:
        raise SystemExit(f"{path}: only {len(rows)} prompts to choose from, asked for {n_train + n_eval}")
    work.mkdir(parents=True, exist_ok=True)
    (work / "train.jsonl").write_text("".join(rows[:n_train]))
    (work / "eval.jsonl").write_text("".join(rows[n_train:]))
    return work / "train.jsonl", work / "eval.jsonl"


def greedy_accuracy(session, eval_rows: dict) -> float:
    """Mean exact-answer reward of greedy completions of the held-out prompts under the current params."""
    run = session.run
    sequences, mask = sample(run, session.state.params, eval_rows["prompt_ids"], eval_rows["prompt_mask"],
                             jax.random.PRNGKey(0), temperature=0.0)
    responses = decode(run.tokenizer, sequences, mask, eval_rows["prompt_ids"].shape[1])
    return float(answer_reward(responses, eval_rows["answers"]).mean())


class Budget:
    """The engine's step callback: stop once the method has generated `budget` completion tokens, recording the
    training reward per step and the held-out greedy accuracy every budget / evals tokens."""

    def __init__(self, a, eval_path: Path):
        self.budget, self.every, self.eval_path, self.max_seq_len = a.budget, a.budget / a.evals, eval_path, 64
        self.curve, self.evals, self.tokens, self.eval_set = [], [], 0, None

    def __call__(self, session, step: int, record: dict) -> bool:
        if self.eval_set is None:                        # before the first step: the starting model
            held_out = RLAIFDataset(self.eval_path, session.run.tokenizer, self.max_seq_len)
            self.eval_set = held_out.batch(np.arange(len(held_out)))
            self.tokens = int(session.state.extra.get("init_tokens", 0))   # SPO-paper's offline priors count too
            self.evals.append((self.tokens, greedy_accuracy(session, self.eval_set)))
            self.next_eval = self.every
            return False
        self.tokens += record["completion_tokens"]
        self.curve.append({"step": step, "tokens": self.tokens, "reward": record["reward"],
                           **{k: record[k] for k in ("baseline", "rho") if k in record}, "loss": record["loss"],
                           **{k: record[k] for k in ("rollout_s", "reward_s", "logps_s", "update_s")}})
        done = self.tokens >= self.budget
        if self.tokens >= self.next_eval or done:
            self.evals.append((self.tokens, greedy_accuracy(session, self.eval_set)))
            self.next_eval += self.every
        return done


def run_method(name: str, a, weights: Path, train_path: Path, eval_path: Path) -> dict:
    stage_name, flags = METHODS[name]
    argv = ["--stage", stage_name, "--preset", "tiny", "--dtype", "float32", "--from_weight", str(weights),
            "--data_path", str(train_path), "--out_dir", str(a.work / name), "--max_seq_len", "64",
            "--max_gen_len", str(a.gen), "--learning_rate", str(a.lr), "--accumulation_steps", "1",
            "--epochs", "1000", "--reasoning", "0", "--answer_reward", "1", "--seed", str(a.seed),
            "--log_interval", "1000000", "--save_interval", "1000000", *flags,
            *(["--spo_init_samples", str(a.init_samples)] if name == "spo_paper" else [])]
    t0 = time.perf_counter()
    budget = Budget(a, eval_path)
    s = train(*config_of(parser().parse_args(argv)), callback=budget)
    seconds = time.perf_counter() - t0
    curve, evals, tokens = budget.curve, budget.evals, budget.tokens
    rewards = np.array([c["reward"] for c in curve])
    tenth = max(1, len(rewards) // 10)
    train_gain = float(rewards[-tenth:].mean() - rewards[:tenth].mean())
    eval_gain = evals[-1][1] - evals[0][1]
    per_unit = lambda gain: tokens / gain if gain > 0 else float("inf")
    summary = {"method": name, "steps": len(curve), "tokens": tokens,
               "init_tokens": int(s.state.extra.get("init_tokens", 0)), "seconds": seconds,
               "reward_first": float(rewards[:tenth].mean()), "reward_last": float(rewards[-tenth:].mean()),
               "eval_first": evals[0][1], "eval_last": evals[-1][1], "eval_best": max(e for _, e in evals),
               "eval_se": float(np.sqrt(evals[-1][1] * (1 - evals[-1][1]) / len(budget.eval_set["answers"]))),
               "tokens_per_eval_gain": per_unit(eval_gain), "tokens_per_reward_gain": per_unit(train_gain),
               **{k: float(np.mean([c[k] for c in curve[1:] or curve]))          # per step, after the compiling one
                  for k in ("rollout_s", "reward_s", "logps_s", "update_s")}}
    print_table([summary])
    return {"summary": summary, "curve": curve, "evals": evals}


def moving_average(x: np.ndarray, w: int) -> np.ndarray:
    return np.convolve(x, np.ones(w) / w, mode="valid") if len(x) >= w else x


def plot(results: dict, path: Path, a) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_step, ax_tok, ax_eval) = plt.subplots(1, 3, figsize=(15, 4))
    for name, r in results.items():
        steps = np.array([c["step"] for c in r["curve"]])
        tokens = np.array([c["tokens"] for c in r["curve"]])
        smooth = moving_average(np.array([c["reward"] for c in r["curve"]]), a.smooth)
        ax_step.plot(steps[len(steps) - len(smooth):], smooth, label=name)
        ax_tok.plot(tokens[len(tokens) - len(smooth):], smooth, label=name)
        ax_eval.plot(*zip(*r["evals"]), marker="o", label=name)
    for ax, x, title in ((ax_step, "step", f"training reward (moving mean of {a.smooth} steps)"),
                         (ax_tok, "generated tokens", "training reward (the same moving mean)"),
                         (ax_eval, "generated tokens", f"greedy accuracy, {a.eval} held-out prompts")):
        ax.set_xlabel(x)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"GRPO vs SPO (reference) vs SPO (paper): tiny model, {a.budget:,} generated tokens each")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def curve_table(results: dict, points: int = 10) -> list[dict]:
    """Training reward (mean over each tenth of the budget) and the held-out accuracy, against generated tokens."""
    rows = []
    for i in range(points):
        lo, hi = i / points, (i + 1) / points
        row = {"tokens": f"{hi:.0%}"}
        for name, r in results.items():
            total = r["summary"]["tokens"]
            part = [c["reward"] for c in r["curve"] if lo * total < c["tokens"] <= hi * total]
            row[f"{name}_reward"] = float(np.mean(part)) if part else float("nan")
        rows.append(row)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="start", default=None, help="full_sft weights (.safetensors) to start from")
    p.add_argument("--budget", type=int, default=30_000, help="completion tokens each method generates")
    p.add_argument("--gen", type=int, default=20, help="max new tokens per completion")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--prompts", type=int, default=256, help="training prompts (the first rows of rlaif.jsonl)")
    p.add_argument("--eval", type=int, default=512, help="held-out prompts (the rows after them)")
    p.add_argument("--evals", type=int, default=5, help="held-out evaluations along the budget")
    p.add_argument("--smooth", type=int, default=10)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--init_samples", type=int, default=0,
                   help="SPO-paper: offline samples per training prompt for its priors (--spo_init_samples), their "
                        "tokens counted in its budget; 0: Jeffreys priors")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--work", type=Path, default=Path("/tmp/minimind_bench_rl_compare"))
    p.add_argument("--out", default="experiments/results/rl_compare.json")
    p.add_argument("--png", default="experiments/results/rl_compare.png")
    a = p.parse_args(argv)
    weights = starting_model(a.start, a.work / "base")
    train_path, eval_path = split_prompts(a.work, a.prompts, a.eval)
    results = {}
    for name in a.methods.split(","):
        print(f"\n=== {name} ===", flush=True)
        results[name] = run_method(name, a, weights, train_path, eval_path)
    summaries = [r["summary"] for r in results.values()]
    print_table(curve_table(results), "training reward by tenth of the generated-token budget")
    print_table([{"method": n, **{f"{i / a.evals:.0%}": acc for i, (_, acc) in enumerate(r["evals"])}}
                 for n, r in results.items()], "greedy held-out accuracy by fraction of the generated-token budget")
    print_table(summaries, f"GRPO vs SPO, tiny model, {a.budget:,} generated tokens each, {a.prompts} prompts")
    plot(results, Path(a.png), a)
    write_json(a.out, {"env": environment(), "config": {k: str(v) for k, v in vars(a).items()},
                       "start": str(weights), "peak_rss_MB": peak_rss_mb(), "results": results})


if __name__ == "__main__":
    main()

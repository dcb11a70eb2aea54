"""python -m experiments.rl_learn: proof that the RL stages learn.

From the tiny model that `python -m train.run --stage all --preset tiny` trains (out/full_sft_64; trained here
first when absent), GRPO (8 generations) and SPO run with the exact-answer reward alone on the embedded verifiable
prompts whose answer is one digit (the ones a 64x2 model can get right at all), for the same number of generated
tokens. Printed: the training reward by tenth of the budget, greedy accuracy on held-out prompts along the way,
its gain in standard errors, and the seconds per step spent in rollout, reward, log-probs and update.
"""
import argparse
import json
from argparse import Namespace
from pathlib import Path

import numpy as np

from experiments import rl_compare
from bench.common import environment, peak_rss_mb, print_table, write_json


def one_digit_answer(line: str) -> bool:
    """An rlaif.jsonl row whose reference answer is one digit: the prompts a 64x2 model can get right at all."""
    return len(json.loads(line)["conversations"][-1]["content"].strip()) == 1


def gain_in_se(summary: dict, n_eval: int) -> float:
    """Held-out accuracy gained, in standard errors of the difference of two binomial proportions."""
    p0, p1 = summary["eval_first"], summary["eval_last"]
    se = np.sqrt((p0 * (1 - p0) + p1 * (1 - p1)) / n_eval)
    return float((p1 - p0) / se) if se > 0 else 0.0


def learn(a) -> dict:
    """{method: {'summary', 'curve', 'evals'}} for every method in a.methods (see rl_compare.run_method)."""
    weights = rl_compare.starting_model(a.start, a.work / "base")
    train_path, eval_path = rl_compare.split_prompts(a.work, a.prompts, a.eval, keep=one_digit_answer)
    results = {}
    for name in a.methods.split(","):
        print(f"\n=== {name} ===", flush=True)
        run_args = Namespace(**vars(a), init_samples=0)
        results[name] = rl_compare.run_method(name, run_args, weights, train_path, eval_path)
        results[name]["summary"]["gain_se"] = gain_in_se(results[name]["summary"], a.eval)
    return results


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="start", default=None, help="full_sft weights (.safetensors) to start from")
    p.add_argument("--budget", type=int, default=30_000, help="completion tokens each method generates")
    p.add_argument("--gen", type=int, default=8, help="max new tokens per completion")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--prompts", type=int, default=256, help="one-digit training prompts")
    p.add_argument("--eval", type=int, default=256, help="held-out one-digit prompts")
    p.add_argument("--evals", type=int, default=5, help="held-out evaluations along the budget")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--methods", default="grpo,spo_minimind")
    p.add_argument("--work", type=Path, default=Path("/tmp/minimind_bench_rl_learn"))
    p.add_argument("--out", default="experiments/results/rl_learn.json")
    return p


def main(argv=None):
    a = parser().parse_args(argv)
    results = learn(a)
    print_table(rl_compare.curve_table(results), "training reward (mean of the rollouts) by tenth of the budget")
    print_table([{"method": n, **{f"{i / a.evals:.0%}": acc for i, (_, acc) in enumerate(r["evals"])}}
                 for n, r in results.items()],
                f"greedy accuracy on {a.eval} held-out one-digit prompts, by fraction of the budget")
    cols = ("method", "steps", "tokens", "seconds", "reward_first", "reward_last", "eval_first", "eval_last",
            "gain_se", "rollout_s", "reward_s", "logps_s", "update_s")
    print_table([{k: r["summary"][k] for k in cols} for r in results.values()],
                f"RL on the tiny model, exact-answer reward, {a.budget:,} generated tokens each (times: s per step)")
    write_json(a.out, {"env": environment(), "config": {k: str(v) for k, v in vars(a).items()},
                       "peak_rss_MB": peak_rss_mb(), "results": results})
    return results


if __name__ == "__main__":
    main()

"""python -m bench.rl: seconds per RL step split into rollout / reward / update, and decoding speed against the
bound set by reading the weights once per decoded token (the 512x8 model, prompt 66, 256 new tokens).

The steps are the engine's own (train.engine.setup), from a random-init model that rarely emits eos, so every
completion runs to full length: the worst case for the sampler.
"""
import argparse
import time

import jax
import numpy as np

from bench.common import environment, peak_rss_mb, print_table, write_json
from train import stages
from train.args import parser, with_defaults
from train.engine import setup

MEMORY_BANDWIDTH = 30e9   # bytes/s both cores read here (PERF_NOTES.md); override with --bandwidth


def session(stage: str, preset: str, gen: int, rollout_dtype: str, out_dir: str, extra=()):
    flags = ["--stage", stage, "--preset", preset, "--from_weight", "none", "--max_gen_len", str(gen),
             "--dtype", "float32", "--rollout_dtype", rollout_dtype, "--out_dir", out_dir, "--log_interval", "1000",
             "--save_interval", "100000", *extra]
    st = stages.get(stage)
    return setup(st, with_defaults(parser().parse_args(flags), st.defaults))


def time_steps(s, steps: int) -> dict:
    """Mean seconds of rollout (sampling), reward, log-probs and the jitted update over `steps` steps (after one
    step that compiles everything)."""
    parts = {"rollout_s": [], "reward_s": [], "logps_s": [], "update_s": [], "new_tokens": []}
    for step in range(steps + 1):
        batch, info = s.batch(step)
        t0 = time.perf_counter()
        s.state, m = s.step_fn(s.state, batch, s.frozen)
        jax.block_until_ready(m)
        if step:      # step 0 compiles
            for k in ("rollout_s", "reward_s", "logps_s"):
                parts[k].append(info[k])
            parts["update_s"].append(time.perf_counter() - t0)
            parts["new_tokens"].append(np.asarray(batch["completion_mask"]).size)
    return {k: float(np.mean(v)) for k, v in parts.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--preset", default="small")
    p.add_argument("--gen", type=int, default=256)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--bandwidth", type=float, default=MEMORY_BANDWIDTH)
    p.add_argument("--out", default="bench/results/rl.json")
    p.add_argument("--out_dir", default="/tmp/minimind_bench_rl")
    a = p.parse_args(argv)
    rows = []
    for stage, extra in (("grpo", ["--num_generations", "8"]), ("spo", ["--accumulation_steps", "1"])):
        for dtype in ("float32", "bfloat16"):
            s = session(stage, a.preset, a.gen, dtype, a.out_dir, extra)
            r = time_steps(s, a.steps)
            weight_bytes = sum(x.size for x in jax.tree.leaves(s.state.params)) * (4 if dtype == "float32" else 2)
            rows_per_step = r["new_tokens"] / a.gen                  # completions decoded together
            decode_steps_per_s = a.gen / r["rollout_s"]
            bound = a.bandwidth / weight_bytes                       # decode steps/s if only the weights were read
            rows.append({"stage": stage, "rollout_dtype": dtype, "batch": int(rows_per_step),
                         "rollout_s": r["rollout_s"], "reward_s": r["reward_s"], "logps_s": r["logps_s"],
                         "update_s": r["update_s"], "new_tok/s": r["new_tokens"] / r["rollout_s"],
                         "decode_steps/s": decode_steps_per_s, "of_bound": decode_steps_per_s / bound,
                         "peak_rss_MB": peak_rss_mb()})
            print_table(rows[-1:])
    print_table(rows, f"RL step on the {a.preset} model, prompt 66, {a.gen} new tokens (mean of {a.steps} steps)")
    write_json(a.out, {"env": environment(), "bandwidth": a.bandwidth, "rows": rows})


if __name__ == "__main__":
    main()

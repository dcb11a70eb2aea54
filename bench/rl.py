"""python -m bench.rl: seconds per RL step split into rollout / reward / update, and decoding speed against the
bound set by reading the weights once per decoded token (the 512x8 model, prompt 66, 256 new tokens).

Two tables: the engine's GRPO (8 generations) and SPO steps, and the sampler alone at batch 4 beside the
reference's (HF-generate-style PyTorch loop with a KV cache, bench/torch_reference.py) in the same run.

    python -m bench.rl             # speed
    python -m bench.rl --agent     # the agent stage learns tool use: held-out accuracy, step split, rollout speed

Whether RL learns, and how the methods compare, are experiments: `python -m experiments.rl_learn` and
`python -m experiments.rl_compare`; `--agent` runs `experiments.agent_learn` (MiniMind-3's multi-turn tool-use RL
from the tiny pipeline's SFT model; its flags: `--agent --help`). The steps are the engine's own
(train.engine.setup), from a random-init model that rarely emits eos, so every completion runs to full length: the
worst case for the sampler.
"""
import argparse
import sys
import time

import jax
import numpy as np

from bench.common import environment, peak_rss_mb, print_table, write_json
from bench.model import bench_generate
from minimind_jax import MiniMindConfig, MiniMindForCausalLM
from train.args import parser
from train.engine import make_batch, setup
from train.run import config_of

MEMORY_BANDWIDTH = 30e9   # bytes/s both cores of the development machine read; override with --bandwidth


def session(stage: str, preset: str, gen: int, rollout_dtype: str, out_dir: str, extra=()):
    flags = ["--stage", stage, "--preset", preset, "--from_weight", "none", "--max_gen_len", str(gen),
             "--dtype", "float32", "--rollout_dtype", rollout_dtype, "--out_dir", out_dir, "--log_interval", "1000",
             "--save_interval", "100000", *extra]
    return setup(*config_of(parser().parse_args(flags)))


def time_steps(s, steps: int) -> dict:
    """Mean seconds of rollout (sampling), reward, log-probs and the jitted update over `steps` steps (after one
    step that compiles everything)."""
    parts = {"rollout_s": [], "reward_s": [], "logps_s": [], "update_s": [], "new_tokens": []}
    for step in range(steps + 1):
        batch, info, extra = make_batch(s, s.state, step)
        if extra is not None:
            s.state = s.state.replace(extra=extra)
        t0 = time.perf_counter()
        s.state, m = s.step_fn(s.state, batch, s.frozen)
        jax.block_until_ready(m)
        if step:      # step 0 compiles
            for k in ("rollout_s", "reward_s", "logps_s"):
                parts[k].append(info[k])
            parts["update_s"].append(time.perf_counter() - t0)
            parts["new_tokens"].append(np.asarray(batch["completion_mask"]).size)
    return {k: float(np.mean(v)) for k, v in parts.items()}


def decode_bound(params, dtype: str, bandwidth: float) -> float:
    """Decode steps/s if a step only read every weight once, in `dtype`, at `bandwidth` bytes/s."""
    return bandwidth / sum(x.size * jax.numpy.dtype(dtype).itemsize for x in jax.tree.leaves(params))


def sampler_rows(preset: str, batch: int, prompt: int, new: int, bandwidth: float, torch_ref: bool) -> list[dict]:
    """New tokens/s of generate() with fp32 and bf16 weights, and of the reference's sampler, at one shape."""
    cfg = MiniMindConfig.from_preset(preset)
    params = jax.jit(MiniMindForCausalLM(cfg).init)(jax.random.key(0), jax.numpy.zeros((1, 8), jax.numpy.int32))["params"]
    rows = []
    for dtype in ("float32", "bfloat16"):
        weights = jax.tree.map(lambda x: x.astype(dtype), params)
        r = bench_generate(cfg, weights, batch, prompt, new, repeat=2)
        bound = decode_bound(params, dtype, bandwidth)
        rows.append({"sampler": "minimind-jax generate", "weights": dtype, "batch": batch,
                     "new_tok/s": r["new_tokens_per_s"], "decode_steps/s": new / r["seconds"],
                     "of_bound": new / r["seconds"] / bound, "compile_s": r["compile_s"]})
        print_table(rows[-1:])
    if torch_ref:
        try:
            from bench.torch_reference import decode_tokens_per_s
        except ImportError:
            print("torch is not installed: skipping the reference sampler (pip install 'minimind-jax[torch]')")
        else:
            r = decode_tokens_per_s(cfg.hidden_size, cfg.num_hidden_layers, batch, prompt, new)
            rows.append({"sampler": "reference (torch, KV cache)", "weights": "float32", "batch": batch,
                         "new_tok/s": r["new_tokens_per_s"], "decode_steps/s": new / r["seconds"],
                         "of_bound": new / r["seconds"] / decode_bound(params, "float32", bandwidth),
                         "compile_s": 0.0})
            for row in rows[:-1]:
                row["x_reference"] = row["new_tok/s"] / r["new_tokens_per_s"]
    return rows


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--agent" in argv:
        from experiments import agent_learn
        return agent_learn.main([x for x in argv if x != "--agent"], out="bench/results/rl_agent.json")
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--preset", default="small")
    p.add_argument("--gen", type=int, default=256)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--prompt", type=int, default=66)
    p.add_argument("--sampler_batch", type=int, default=4)
    p.add_argument("--no_torch", action="store_true", help="skip the reference sampler")
    p.add_argument("--bandwidth", type=float, default=MEMORY_BANDWIDTH)
    p.add_argument("--agent", action="store_true", help="the agent study instead (its flags: --agent --help)")
    p.add_argument("--json", "--out", dest="out", default="bench/results/rl.json")
    p.add_argument("--out_dir", default="/tmp/minimind_bench_rl")
    a = p.parse_args(argv)
    rows = []
    for stage, extra in (("grpo", ["--num_generations", "8"]), ("spo", ["--accumulation_steps", "1"])):
        for dtype in ("float32", "bfloat16"):
            s = session(stage, a.preset, a.gen, dtype, a.out_dir, extra)
            r = time_steps(s, a.steps)
            rows_per_step = r["new_tokens"] / a.gen                  # completions decoded together
            decode_steps_per_s = a.gen / r["rollout_s"]
            bound = decode_bound(s.state.params, dtype, a.bandwidth)
            rows.append({"stage": stage, "rollout_dtype": dtype, "batch": int(rows_per_step),
                         "rollout_s": r["rollout_s"], "reward_s": r["reward_s"], "logps_s": r["logps_s"],
                         "update_s": r["update_s"], "new_tok/s": r["new_tokens"] / r["rollout_s"],
                         "decode_steps/s": decode_steps_per_s, "of_bound": decode_steps_per_s / bound,
                         "peak_rss_MB": peak_rss_mb()})
            print_table(rows[-1:])
    sampler = sampler_rows(a.preset, a.sampler_batch, a.prompt, a.gen, a.bandwidth, not a.no_torch)
    print_table(rows, f"RL step on the {a.preset} model, prompt 66, {a.gen} new tokens (mean of {a.steps} steps)")
    print_table(sampler, f"sampler alone, batch {a.sampler_batch}, prompt {a.prompt}, {a.gen} new tokens, no early "
                         f"stop; of_bound = decode steps/s over {a.bandwidth / 1e9:.0f} GB/s / weight bytes")
    write_json(a.out, {"env": environment(), "bandwidth": a.bandwidth, "rows": rows, "sampler": sampler})


if __name__ == "__main__":
    main()

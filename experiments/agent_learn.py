"""python -m experiments.agent_learn: proof that the agent stage learns tool use.

From the MiniMind-3 tiny SFT model (out/full_sft_64 when it is a MiniMind-3 model, else one trained here: the tiny
pipeline's pretrain, then full_sft at 512 tokens so that the tool conversations fit), the agent stage trains on the
embedded tool-needing prompts (every 10th row held out). Printed: on the held-out prompts, greedy rollouts'
fraction answered correctly (every gt fact in the final answer, with its standard error) and tool-call success
rate (a call of an offered tool whose arguments pass its check) before and after; seconds per RL step split into
rollout / tools / update; and rollout tokens/s of the batched multi-turn rollout against a one-row-at-a-time loop
like the reference's, timed on the same prompts in the same run.
"""
import argparse
import dataclasses
import time
from pathlib import Path

import jax
import numpy as np

from bench.common import environment, peak_rss_mb, print_table, write_json
from losses.rewards3 import call_arguments, facts_found, parse_tool_calls
from minimind_jax.data import SAMPLE_DIRS, open_dataset
from train.args import parser as train_parser
from train.batches import held_out_split
from train.engine import train
from train.pipeline import TINY
from train.multiturn import agent_rollouts, turn_sampler
from train.run import config_of
from train.run import main as train_main
from train.stages.agent import tool_names
from train.tools import registry

AGENT = SAMPLE_DIRS[3] / "agent.jsonl"


def starting_model(path: str | None, work: Path, sft_steps: int) -> Path:
    """The MiniMind-3 full_sft weights to start from: the given or default path, else a tiny model trained now."""
    trained_here = work / "full_sft_64" / "weights.safetensors"
    for candidate in filter(None, [path, "out/full_sft_64/weights.safetensors", trained_here]):
        config = Path(candidate).parent / "config.json"
        if Path(candidate).exists() and '"generation": 3' in (config.read_text() if config.exists() else ""):
            return Path(candidate)
    print("no MiniMind-3 tiny full_sft model found: training one (pretrain, then full_sft at 512 tokens)")
    plan = {"pretrain": TINY["pretrain"], "full_sft": {**TINY["full_sft"], "max_seq_len": 512, "batch_size": 16,
                                                       "max_steps": sft_steps}}
    for stage, settings in plan.items():
        flags = [x for k, v in settings.items() for x in (f"--{k}", str(v))]
        train_main(["--stage", stage, "--preset", "tiny", "--minimind", "3", "--out_dir", str(work),
                    "--log_interval", "50", "--overwrite", *flags])
    return trained_here


def held_out(tokenizer, n: int) -> dict:
    """The first n held-out agent rows (every 10th of the file), thinking closed."""
    ds = open_dataset("agent", AGENT, tokenizer, 512, seed=0, thinking_ratio=0.0)
    return ds.batch(held_out_split(len(ds))[1][:n])


def rollouts(run, params, rows: dict, *, batched: bool, temperature: float = 0.0):
    """Greedy tool rollouts of the rows' prompts: all rows per sampler call, or one row at a time."""
    tools, _ = registry(run.config.rl3.tools)
    prompts = [list(r[m == 1]) for r, m in zip(rows["prompt_ids"], rows["prompt_mask"])]
    kw = dict(max_turns=run.config.rl3.max_turns, max_total_len=run.config.rl3.max_total_len)
    sampler = turn_sampler(run, params, jax.random.PRNGKey(0), temperature=temperature)
    if batched:
        return agent_rollouts(sampler, run.tokenizer, prompts, [False] * len(prompts), tools, **kw)
    trajs, times = [], {"generate_s": 0.0, "tools_s": 0.0}
    for p in prompts:
        t, dt = agent_rollouts(sampler, run.tokenizer, [p], [False], tools, **kw)
        trajs += t
        times = {k: times[k] + dt[k] for k in times}
    return trajs, times


def evaluate(run, params, rows: dict) -> dict:
    """Held-out accuracy (every gt fact in the final answer, rollout finished) with its standard error, and the
    tool-call success rate."""
    trajs, _ = rollouts(run, params, rows, batched=True)
    _, checks = registry(run.config.rl3.tools)
    correct, calls, good = [], 0, 0
    for t, gt, offered in zip(trajs, rows["gt"], rows["tools"]):
        final = "" if t.unfinished or not t.turns else t.turns[-1].split("</tool_call>")[-1]
        correct.append(t.calls > 0 and len(facts_found(final, gt)) == len(gt))
        names = tool_names(offered)
        made = [c for turn in t.turns for c in parse_tool_calls(turn)]
        calls += len(made)
        good += sum(bool(c.get("name") in names and checks.get(c.get("name"), lambda a: False)(call_arguments(c)))
                    for c in made)
    p = float(np.mean(correct))
    return {"accuracy": p, "accuracy_se": float(np.sqrt(p * (1 - p) / len(correct))),
            "tool_calls": calls / len(trajs), "tool_success": good / calls if calls else 0.0}


def throughput(run, params, rows: dict) -> dict:
    """Generated tokens per second of sampled rollouts, batched vs one row at a time (the first, compiling, call
    of each shape excluded by a warm-up pass)."""
    out = {}
    for name, batched in (("batched", True), ("one_row", False)):
        rollouts(run, params, rows, batched=batched, temperature=0.8)                     # compile
        t0 = time.perf_counter()
        trajs, times = rollouts(run, params, rows, batched=batched, temperature=0.8)
        tokens = sum(sum(t.mask) for t in trajs)
        out[f"{name}_tokens_per_s"] = tokens / times["generate_s"]
        out[f"{name}_s"] = time.perf_counter() - t0
    return out


def learn(a) -> dict:
    weights = starting_model(a.start, a.work, a.sft_steps)
    flags = train_parser().parse_args(
        ["--stage", "agent", "--minimind", "3", "--preset", "tiny", "--from_weight", str(weights),
         "--out_dir", str(a.work / "agent"), "--overwrite", "--max_steps", str(a.steps), "--batch_size",
         str(a.batch), "--num_generations", str(a.G), "--learning_rate", str(a.lr), "--max_gen_len", str(a.gen),
         "--max_total_len", "768", "--log_interval", "5", "--save_interval", "100000", "--seed", str(a.seed)])
    stage, config = config_of(flags)
    stage = dataclasses.replace(stage, train_rows=lambda n: held_out_split(n)[0])
    records, found = [], {}

    def callback(session, step, record):
        if step == 0:
            rows = held_out(session.run.tokenizer, a.eval)
            found.update(rows=rows, before=evaluate(session.run, session.state.params, rows),
                         speed=throughput(session.run, session.state.params,
                                          {k: v[:a.speed_rows] for k, v in rows.items()}))
            print("before:", found["before"], found["speed"], flush=True)
        else:
            records.append(record)

    s = train(stage, config, callback=callback)
    after = evaluate(s.run, s.state.params, found["rows"])
    mean = lambda k: float(np.mean([r[k] for r in records[1:]]))        # the first step compiles
    before = found["before"]
    gain = after["accuracy"] - before["accuracy"]
    se = float(np.hypot(before["accuracy_se"], after["accuracy_se"]))
    return {"before": before, "after": after, "gain": gain, "gain_se": gain / se if se else 0.0,
            "steps": len(records), "rollout_s": mean("rollout_s"), "tools_s": mean("tools_s"),
            "logps_s": mean("logps_s"), "update_s": mean("update_s"), **found["speed"],
            "reward_first": float(np.mean([r["reward"] for r in records[:5]])),
            "reward_last": float(np.mean([r["reward"] for r in records[-5:]]))}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="start", default=None, help="MiniMind-3 full_sft weights (.safetensors)")
    p.add_argument("--sft_steps", type=int, default=300, help="full_sft steps when a model is trained here")
    p.add_argument("--steps", type=int, default=30, help="agent RL steps")
    p.add_argument("--batch", type=int, default=4, help="prompts per step")
    p.add_argument("--G", type=int, default=4, help="rollouts per prompt")
    p.add_argument("--gen", type=int, default=48, help="new tokens per turn")
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--eval", type=int, default=40, help="held-out prompts (the file holds 40)")
    p.add_argument("--speed_rows", type=int, default=8, help="prompts of the batched vs one-row timing")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--work", type=Path, default=Path("/tmp/minimind_agent_learn"))
    p.add_argument("--out", default="experiments/results/agent_learn.json")
    return p


def main(argv=None):
    a = parser().parse_args(argv)
    r = learn(a)
    print_table([{"": k, "accuracy": f"{v['accuracy']:.3f} ± {v['accuracy_se']:.3f}", "tool_calls": v["tool_calls"],
                  "tool_success": v["tool_success"]} for k, v in (("before", r["before"]), ("after", r["after"]))],
                f"greedy tool rollouts on {a.eval} held-out prompts")
    print_table([{k: r[k] for k in ("steps", "gain", "gain_se", "reward_first", "reward_last", "rollout_s",
                                    "tools_s", "logps_s", "update_s")}], "agent RL (times: s per step)")
    print_table([{k: r[k] for k in ("batched_tokens_per_s", "one_row_tokens_per_s", "batched_s", "one_row_s")}],
                f"rollout throughput on {a.speed_rows} prompts (sampled)")
    write_json(a.out, {"env": environment(), "config": {k: str(v) for k, v in vars(a).items()},
                       "peak_rss_MB": peak_rss_mb(), "results": r})
    return r


if __name__ == "__main__":
    main()

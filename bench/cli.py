"""python -m bench.cli: the train step as a user gets it, through `python -m train.run`, beside the reference.

Our step time is the difference of a long and a short CLI run (12 and 4 steps by default) divided by the steps
between them, so start-up, compilation (from a warmed compile cache), the first steps and the final save cancel.
The reference (bench/torch_reference.py, fp32, AdamW, clip) runs in a process of its own between our two runs,
and its median step counts. Each round is [short run, reference, long run]; the load average is read before each
run and printed beside it, and the ratio is that of the same round (rounds with a loaded machine are the ones to
repeat).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from bench.common import environment, print_table, write_json


def load() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def cli_seconds(args: list[str], steps: int, out_dir: str, cache: str) -> float:
    """Wall-clock seconds of one `python -m train.run ... --max_steps steps` in a fresh run directory."""
    cmd = [sys.executable, "-m", "train.run", *args, "--max_steps", str(steps), "--out_dir", out_dir, "--overwrite",
           "--save_interval", "100000", "--log_interval", "100000", "--compile_cache", cache]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t0


def reference_seconds(preset: str, batch: int, seq: int, steps: int, dtype: str) -> dict:
    """The reference's step times, from a process of its own (torch and XLA do not share the cores' threads)."""
    from minimind_jax import MiniMindConfig

    cfg = MiniMindConfig.from_preset(preset)
    cmd = [sys.executable, "-m", "bench.torch_reference", "--hidden", str(cfg.hidden_size), "--layers",
           str(cfg.num_hidden_layers), "--moe", str(int(cfg.use_moe)), "--batch", str(batch), "--seq", str(seq),
           "--steps", str(steps), "--dtype", dtype]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", help="small, moe (MiniMind-2)")
    p.add_argument("--dtype", default="float32", help="our --dtype (float32, bfloat16)")
    p.add_argument("--ref_dtype", default="float32", help="the reference's: float32, or bfloat16 (autocast)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=340, help="tokens per row (the CLI's --max_seq_len is one more)")
    p.add_argument("--steps", default="4,12", help="the short and the long run's --max_steps")
    p.add_argument("--ref_steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default="bench/results/cli.json")
    a = p.parse_args(argv)

    short, long = map(int, a.steps.split(","))
    tokens = a.batch * a.seq
    args = ["--stage", "pretrain", "--preset", a.preset, "--batch_size", str(a.batch), "--max_seq_len",
            str(a.seq + 1), "--accumulation_steps", "1", "--dtype", a.dtype]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "xla")
        cli_seconds(args, 1, os.path.join(tmp, "warm"), cache)         # tokenizes and fills the compile cache
        for r in range(a.rounds):
            load_short = load()
            t_short = cli_seconds(args, short, os.path.join(tmp, f"short{r}"), cache)
            load_ref = load()
            ref = reference_seconds(a.preset, a.batch, a.seq, a.ref_steps, a.ref_dtype)
            load_long = load()
            t_long = cli_seconds(args, long, os.path.join(tmp, f"long{r}"), cache)
            step = (t_long - t_short) / (long - short)
            rows.append({"round": r, "model": a.preset, "dtype": a.dtype, "step_s": step,
                         "tokens/s": tokens / step, "ref_step_s": ref["median_s"],
                         "ref_tokens/s": tokens / ref["median_s"], "x_ref": ref["median_s"] / step,
                         f"run_{short}_s": t_short, f"run_{long}_s": t_long,
                         "load": f"{load_short:.1f}/{load_ref:.1f}/{load_long:.1f}"})
            print_table(rows[-1:])
    ratios = [row["x_ref"] for row in rows]
    print_table(rows, f"through the CLI: {a.preset} {a.dtype}, batch {a.batch} x seq {a.seq}, step = "
                      f"(run {long} - run {short}) / {long - short}; reference {a.ref_dtype} median of {a.ref_steps}")
    print(f"x reference: median {statistics.median(ratios):.2f} (rounds: {', '.join(f'{x:.2f}' for x in ratios)})")
    write_json(a.out, {"env": environment(), "args": vars(a), "rows": rows})


if __name__ == "__main__":
    main()

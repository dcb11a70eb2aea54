"""python -m bench.ab: the engine's train step of two or more checkouts, interleaved, for telling a change from noise.

Each checkout (a directory with this repository's code, e.g. from `git worktree add /tmp/base HEAD~1`) serves its
compiled step from a warm process of its own (bench.train's `--serve`); the processes take turns, `--steps` steps
each per round, so a slow moment of a shared machine falls on all of them alike. A checkout may carry XLA flags
after a `|`: `"/tmp/base|--xla_cpu_use_onednn=true"`. Each row gives the median over rounds of each round's best
step, and its ratio to the first checkout's.

    git worktree add /tmp/base HEAD~1
    python -m bench.ab --dtype bfloat16 /tmp/base .
"""
import argparse
import os
import shlex
import statistics

from bench.common import StepWorker, environment, print_table, write_json
from bench.train import serve_command


def worker(checkout: str, a) -> StepWorker:
    """The step of `checkout` ('dir' or 'dir|XLA flags'), compiled and warm in a process of its own."""
    path, _, flags = checkout.partition("|")
    serve = serve_command(a.model, a.dtype, a.accum, a.batch, a.seq)
    env = f"XLA_FLAGS={shlex.quote(flags)} PYTHONPATH=." if flags else "PYTHONPATH=."
    return StepWorker(["bash", "-c", f"cd {shlex.quote(os.path.abspath(path))} && {env} exec {shlex.join(serve)}"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkouts", nargs="+", help="directories with the code to compare (optionally 'dir|XLA flags')")
    p.add_argument("--model", default="small", help="small, moe, small3, moe3")
    p.add_argument("--dtype", default="float32", help="float32 or bfloat16")
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=340)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=3, help="steps of each checkout per round (its best counts)")
    p.add_argument("--json", "--out", dest="json", default="bench/results/ab.json")
    a = p.parse_args(argv)
    if len(a.checkouts) < 2:
        p.error("give two or more checkouts to compare")
    for c in a.checkouts:
        if not os.path.isdir(c.partition("|")[0]):
            p.error(f"checkout {c.partition('|')[0]!r} is not a directory")

    workers = {c: worker(c, a) for c in a.checkouts}
    best = {c: [] for c in a.checkouts}                                # each round's best step, seconds
    try:
        for _ in range(a.rounds):
            for c, w in workers.items():
                best[c].append(min(w.steps(a.steps)))
    finally:
        for w in workers.values():
            w.close()
    tokens = a.accum * a.batch * a.seq
    first = statistics.median(best[a.checkouts[0]])
    rows = [{"checkout": c, "model": a.model, "dtype": a.dtype, "step_s": statistics.median(t),
             "tokens/s": tokens / statistics.median(t), "x_first": first / statistics.median(t),
             "rounds_s": " ".join(f"{x:.3f}" for x in t)} for c, t in best.items()]
    print_table(rows, f"engine step, batch {a.batch} x seq {a.seq}: median over {a.rounds} interleaved rounds of the "
                      f"best of {a.steps} steps")
    write_json(a.json, {"environment": environment(), "rows": rows})


if __name__ == "__main__":
    main()

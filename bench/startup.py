"""python -m bench.startup: how long a user waits — `--help`, and the time to the first logged step of
`--stage pretrain --preset tiny` with cold caches (no compiled programs, no token cache) and warm ones (the same
command again). Prints one table and writes bench/results/startup.json."""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import environment, print_table, write_json

RUN = ["--stage", "pretrain", "--preset", "tiny", "--max_steps", "2", "--log_interval", "1", "--batch_size", "8",
       "--accumulation_steps", "1", "--max_seq_len", "128"]


def until_first_step(cmd: list[str], env: dict) -> tuple[float, float]:
    """(seconds until the first 'step 1/' line, seconds until exit)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = None
    for line in p.stdout:
        if first is None and line.startswith("step 1/"):
            first = time.perf_counter() - t0
    p.wait()
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} exited with {p.returncode}")
    return first, time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench/results/startup.json")
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="startup_"))
    env = {**os.environ, "MINIMIND_JAX_CACHE": str(work / "cache"), "JAX_PLATFORMS": "cpu"}
    rows = []
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "train.run", "--help"], env=env, capture_output=True, check=True)
    rows.append({"what": "--help", "seconds": time.perf_counter() - t0, "to_exit_s": time.perf_counter() - t0})
    for label, extra in (("first step, cold caches", []), ("first step, warm caches", ["--overwrite"])):
        first, total = until_first_step([sys.executable, "-m", "train.run", *RUN, "--out_dir", str(work / "out"),
                                         *extra], env)
        rows.append({"what": label, "seconds": first, "to_exit_s": total})
    first, total = until_first_step([sys.executable, "-m", "train.run", *RUN, "--out_dir", str(work / "out2"),
                                     "--compile_cache", "none"], env)
    rows.append({"what": "first step, warm token cache, no compile cache", "seconds": first, "to_exit_s": total})
    shutil.rmtree(work, ignore_errors=True)
    print_table(rows, "time to the first step of --stage pretrain --preset tiny (2 cores)")
    write_json(a.out, {"env": environment(), "rows": rows})


if __name__ == "__main__":
    main()

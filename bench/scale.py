"""python -m bench.scale: the engine's pretrain step on 1, 2 and 4 devices, and what it communicates.

Each device count runs in its own process (XLA_FLAGS=--xla_force_host_platform_device_count=N must be set before
jax is imported), on the meshes data=N and fsdp=N (and data=2,fsdp=2 on 4). The step is the engine's own
(train.engine.setup, the embedded pretrain sample, `--mesh` as on the command line), so it is what
`python -m train.run --stage pretrain` runs.

The devices are fake: N CPU "devices" share this machine's cores, so tokens/s does not grow with N here. What does
carry over to a real pod is the communication: the collectives GSPMD put into the compiled step, counted from its
optimized HLO, with their bytes per device per step (the larger of what goes in and what comes out: an all-gather's
output, a reduce-scatter's input). The batch is one micro-batch (no accumulation loop), so every collective in the
HLO runs once per step. XLA:CPU sums sharded gradients with all-reduce (and keeps its slice) where GPU and TPU
compilers form reduce-scatters, so on `fsdp` the all-reduce bytes here are an upper bound. peak_rss_MB is the peak of
the process of that device count, up to that mesh.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax

from bench.common import environment, peak_rss_mb, print_table, write_json
from train.args import parser
from train.engine import make_batch, setup
from train.run import config_of

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
MESHES = {1: ["data=1"], 2: ["data=2", "fsdp=2"], 4: ["data=4", "fsdp=4", "data=2,fsdp=2"]}
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
               "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16}
# `%name = TYPE op(operands), attributes`; TYPE is one array type or a tuple of them
INSTRUCTION = re.compile(r"%([\w.\-]+) = (.+?) ([a-z][a-z0-9\-]*)\((.*?)\)")
ARRAY_TYPE = re.compile(r"\b([a-z]+[0-9]*)\[([0-9,]*)\]")


def type_bytes(hlo_type: str) -> int:
    """Bytes of an HLO type: 'f32[8,32]{1,0}' -> 1024; a tuple '(f32[], s32[4])' -> 20."""
    total = 0
    for dtype, dims in ARRAY_TYPE.findall(hlo_type):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * DTYPE_BYTES.get(dtype, 4)
    return total


def count_collectives(hlo_text: str) -> dict[str, dict]:
    """{kind: {'count', 'bytes'}} of the collectives in an optimized HLO module (one device's program).

    An async pair (`all-gather-start` / `-done`, as on GPU) counts once, at its start, whose result may hold its
    operands beside the gathered value: its payload is the larger of the operands and the rest.
    """
    sizes, found = {}, {k: {"count": 0, "bytes": 0} for k in COLLECTIVES}
    for name, hlo_type, op, operands in INSTRUCTION.findall(hlo_text):
        sizes[name] = type_bytes(hlo_type)
        kind = op.removesuffix("-start")
        if kind not in found:
            continue
        inputs = sum(sizes.get(o, 0) for o in re.findall(r"%([\w.\-]+)", operands))
        outputs = sizes[name] - inputs if op.endswith("-start") else sizes[name]
        found[kind]["count"] += 1
        found[kind]["bytes"] += max(inputs, outputs)
    return found


def engine_session(preset: str, mesh: str, batch: int, seq: int, out_dir: str):
    """train.engine.setup for pretrain on `mesh`: the sharded state, the jitted step, the data."""
    flags = ["--stage", "pretrain", "--preset", preset, "--dtype", "float32", "--from_weight", "none",
             "--batch_size", str(batch), "--accumulation_steps", "1", "--max_seq_len", str(seq + 1),
             "--mesh", mesh, "--out_dir", out_dir, "--log_interval", "1000", "--save_interval", "100000"]
    return setup(*config_of(parser().parse_args(flags)))


def measure(preset: str, mesh: str, batch: int, seq: int, steps: int) -> dict:
    """tokens/s (best of `steps` after one warm-up step), compile seconds and collectives of one mesh."""
    with tempfile.TemporaryDirectory() as out_dir:
        s = engine_session(preset, mesh, batch, seq, out_dir)
        data = make_batch(s, s.state, 0)[0]
        t0 = time.perf_counter()
        compiled = s.step_fn.lower(s.state, data, s.frozen).compile()
        compile_s = time.perf_counter() - t0
        comm = count_collectives(compiled.as_text())
        state, m = compiled(s.state, data, s.frozen)          # warm-up; the state is donated, so carry it on
        jax.block_until_ready(m)
        best = float("inf")
        for _ in range(steps):
            t0 = time.perf_counter()
            state, m = compiled(state, data, s.frozen)
            jax.block_until_ready(m)
            best = min(best, time.perf_counter() - t0)
    tokens = batch * seq
    return {"devices": jax.device_count(), "mesh": mesh, "tokens/s": tokens / best, "step_s": best,
            "compile_s": compile_s, "loss": float(m["loss"]), "comm": comm, "peak_rss_MB": peak_rss_mb()}


def worker(argv) -> None:
    """In a child process started with N fake devices: measure every mesh, write the results as JSON."""
    p = argparse.ArgumentParser()
    p.add_argument("--worker", required=True)      # the JSON file to write
    p.add_argument("--preset")
    p.add_argument("--meshes")
    p.add_argument("--batch", type=int)
    p.add_argument("--seq", type=int)
    p.add_argument("--steps", type=int)
    a = p.parse_args(argv)
    results = []
    for mesh in a.meshes.split(";"):
        results.append(measure(a.preset, mesh, a.batch, a.seq, a.steps))
        print(f"{jax.device_count()} devices, {mesh}: {results[-1]['tokens/s']:.0f} tokens/s", flush=True)
    Path(a.worker).write_text(json.dumps(results))


def run_devices(n: int, meshes: list[str], a) -> list[dict]:
    """One child process per device count: XLA reads the fake device count once, when jax starts."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}".strip()}
    with tempfile.TemporaryDirectory() as d:
        report = Path(d) / "report.json"
        cmd = [sys.executable, "-m", "bench.scale", "--worker", str(report), "--preset", a.preset,
               "--meshes", ";".join(meshes), "--batch", str(a.batch), "--seq", str(a.seq), "--steps", str(a.steps)]
        subprocess.run(cmd, env=env, check=True)
        return json.loads(report.read_text())


def table_row(r: dict, base_tokens_s: float) -> dict:
    """One printed row: throughput, the loss after the same steps (equal on every mesh: a sanity check), then
    `count / MB` per kind of collective and the total MB."""
    row = {"devices": r["devices"], "mesh": r["mesh"], "tokens/s": r["tokens/s"],
           "vs 1 device": r["tokens/s"] / base_tokens_s, "step_s": r["step_s"], "compile_s": r["compile_s"],
           "loss": f"{r['loss']:.6f}"}
    for kind, c in r["comm"].items():
        row[kind] = f"{c['count']} / {c['bytes'] / 1e6:.1f} MB" if c["count"] else "-"
    row["comm MB/step"] = sum(c["bytes"] for c in r["comm"].values()) / 1e6
    row["peak_rss_MB"] = r["peak_rss_MB"]
    return row


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--worker" in argv:
        return worker(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", help="model size (train.run's presets)")
    p.add_argument("--batch", type=int, default=8, help="global batch (rows per step, split over the devices)")
    p.add_argument("--seq", type=int, default=340, help="tokens per row")
    p.add_argument("--steps", type=int, default=3, help="timed steps per mesh (best is reported)")
    p.add_argument("--quick", action="store_true", help="seq 64, 2 steps: about a minute")
    p.add_argument("--out", default="bench/results/scale.json")
    a = p.parse_args(argv)
    if a.quick:
        a.seq, a.steps = 64, 2
    results = [r for n, meshes in MESHES.items() for r in run_devices(n, meshes, a)]
    rows = [table_row(r, results[0]["tokens/s"]) for r in results]
    print_table(rows, f"pretrain step, {a.preset} preset, batch {a.batch} x seq {a.seq}, fp32, fake CPU devices "
                      f"(best of {a.steps}; collectives: count / bytes per device per step)")
    write_json(a.out, {"env": environment(), "preset": a.preset, "batch": a.batch, "seq": a.seq, "steps": a.steps,
                       "results": results})


if __name__ == "__main__":
    main()

"""python -m bench.scale: the engine's pretrain (or GRPO) step on 1, 2 and 4 devices, and what it communicates.

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

`--rl` times a GRPO step instead (train.engine.setup with `--stage grpo`, random weights, the embedded rlaif
sample): seconds per step split into rollout (sampling), score (rewards, on the host), logps (reference log-probs)
and update, on the same fake meshes and on 2 processes (one device each on 127.0.0.1, JAX distributed over gloo,
meshes data=2 and fsdp=2). Its collectives are the compiled sampler's (minimind_jax.generate._generate, lowered
with the very arguments the rollout passed it): those in the decode loop run once per new token, the rest once
per rollout. On CPU the sampler cuts every weight into per-core blocks once before its decode loop
(generate.decode_parts), which moves where GSPMD gathers fsdp weights, so the program GPU and TPU get (parts=1) is
counted too. A random model rarely emits eos, so every completion runs to --new tokens.
"""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import jax

from bench.common import environment, peak_rss_mb, print_table, write_json
from minimind_jax import generate
from train.args import parser
from train.engine import make_batch, setup
from train.run import config_of

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
MESHES = {1: ["data=1"], 2: ["data=2", "fsdp=2"], 4: ["data=4", "fsdp=4", "data=2,fsdp=2"]}
PROCESS_MESHES = ["data=2", "fsdp=2"]          # --rl on 2 processes of one device each
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


HEADER = re.compile(r"(ENTRY )?%([\w.\-]+) .*\{$")            # a computation's first line
CALLED = re.compile(r"\b(?:condition|body|calls|to_apply|branch_computations|true_computation|false_computation)="
                    r"\{?(%[\w.\-]+(?:, %[\w.\-]+)*)")
TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def computations(hlo_text: str) -> tuple[dict[str, str], str]:
    """({name: the text of its instructions}, the entry's name) of an HLO module."""
    lines, entry, name = {}, None, None
    for line in hlo_text.splitlines():
        head = HEADER.match(line)
        if head:
            name = head[2]
            lines[name] = []
            entry = name if head[1] else entry
        elif name is not None:
            lines[name].append(line)
    return {k: "\n".join(v) for k, v in lines.items()}, entry


def sampler_collectives(hlo_text: str) -> dict[str, dict]:
    """{'rollout': collectives run once per rollout, 'token': once per decoded token} of the compiled sampler, as
    count_collectives. A collective counts as often as the fixed loops around it run (threefry's rounds, whose trip
    count XLA knows); one inside a loop of unknown trip count (the decode loop, which runs until every row is done)
    runs once per token. Reading the loop nest matters: XLA hoists what is loop-invariant (an fsdp weight's
    all-gather) out of the decode loop, so the op names in the metadata do not say where an instruction runs."""
    comps, entry = computations(hlo_text)
    total = {where: {k: {"count": 0, "bytes": 0} for k in COLLECTIVES} for where in ("rollout", "token")}

    def visit(name: str, times: int, where: str) -> None:
        for kind, c in count_collectives(comps[name]).items():
            for key in ("count", "bytes"):
                total[where][kind][key] += times * c[key]
        for line in comps[name].splitlines():
            loop, trip = " while(" in line, TRIP_COUNT.search(line)
            for callee in re.findall(r"%([\w.\-]+)", " ".join(CALLED.findall(line))):
                if loop and trip is None:
                    visit(callee, times, "token")
                else:
                    visit(callee, times * (int(trip[1]) if loop else 1), where)

    visit(entry, 1, "rollout")
    return total


def engine_session(preset: str, mesh: str, out_dir: str, *flags: str):
    """train.engine.setup for the stage `flags` name on `mesh`, from random weights: the sharded state, the jitted
    step, the data."""
    flags = [*flags, "--preset", preset, "--dtype", "float32", "--from_weight", "none", "--mesh", mesh,
             "--out_dir", out_dir, "--log_interval", "1000", "--save_interval", "100000"]
    return setup(*config_of(parser().parse_args(flags)))


def measure(preset: str, mesh: str, batch: int, seq: int, steps: int) -> dict:
    """tokens/s (best of `steps` after one warm-up step), compile seconds and collectives of one mesh."""
    with tempfile.TemporaryDirectory() as out_dir:
        s = engine_session(preset, mesh, out_dir, "--stage", "pretrain", "--batch_size", str(batch),
                           "--accumulation_steps", "1", "--max_seq_len", str(seq + 1))
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


def measure_rl(a, mesh: str) -> dict:
    """Seconds of a GRPO step and of its parts (the fastest of `a.steps` steps after one that compiles), and the
    collectives of the sampler the rollout ran."""
    with tempfile.TemporaryDirectory() as out_dir:
        s = engine_session(a.preset, mesh, out_dir, "--stage", "grpo", "--batch_size", str(a.batch),
                           "--num_generations", str(a.generations), "--max_gen_len", str(a.new))
        steps = []
        # The rollout calls the jitted sampler by its module's name: wrapped there, it records what it was passed
        # (the sharded params, the global prompt arrays and keys), so it can be lowered again exactly as it ran.
        with mock.patch.object(generate, "_generate", wraps=generate._generate) as sampler:
            for step in range(a.steps + 1):
                t0 = time.perf_counter()
                batch, info, _ = make_batch(s, s.state, step)        # the rollout, scored, with its log-probs
                t1 = time.perf_counter()
                s.state, m = s.step_fn(s.state, batch, s.frozen)
                jax.block_until_ready(m)
                steps.append({"step_s": time.perf_counter() - t0, "update_s": time.perf_counter() - t1,
                              **{k: info[k] for k in ("rollout_s", "reward_s", "logps_s", "completion_tokens")}})
        # equal on every layout (to rounding) when the same tokens were sampled; the loss is ~0 at this learning rate
        ref_logp = float(jax.numpy.mean(batch["ref_logps"]))
        args, kwargs = sampler.call_args
        lowered = lambda **change: generate._generate.lower(*args, **{**kwargs, **change}).compile().as_text()
        comm = sampler_collectives(lowered())                   # the executable it ran (cached: no compile)
        # GPU and TPU get parts=1 (no per-core weight blocks), whose collectives differ on fsdp: count it too
        accelerator = comm if kwargs["parts"] == 1 else sampler_collectives(lowered(parts=1))
    best = min(steps[1:], key=lambda r: r["step_s"])
    return {"devices": jax.device_count(), "processes": jax.process_count(), "mesh": mesh, **best,
            "first_step_s": steps[0]["step_s"], "ref_logp": ref_logp, "comm": comm,
            "comm_parts=1": accelerator, "peak_rss_MB": peak_rss_mb()}


def worker(argv) -> None:
    """In a child process started with N fake devices (one of `--processes` with --address): measure every mesh;
    process 0 writes the results as JSON."""
    p = argparse.ArgumentParser()
    p.add_argument("--worker", required=True)      # the JSON file to write
    p.add_argument("--preset")
    p.add_argument("--meshes")
    p.add_argument("--batch", type=int)
    p.add_argument("--seq", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--rl", action="store_true")
    p.add_argument("--generations", type=int)
    p.add_argument("--new", type=int)
    p.add_argument("--address")                    # the coordinator, when this is one of several processes
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--process_id", type=int, default=0)
    a = p.parse_args(argv)
    if a.address:
        from train.distributed import initialize
        initialize(a.address, a.processes, a.process_id)      # before anything touches a device
    results = []
    for mesh in a.meshes.split(";"):
        if a.rl:
            results.append(measure_rl(a, mesh))
            line = f"{results[-1]['step_s']:.2f} s per GRPO step"
        else:
            results.append(measure(a.preset, mesh, a.batch, a.seq, a.steps))
            line = f"{results[-1]['tokens/s']:.0f} tokens/s"
        if a.process_id == 0:
            print(f"{jax.process_count()} x {jax.local_device_count()} devices, {mesh}: {line}", flush=True)
    if a.process_id == 0:
        Path(a.worker).write_text(json.dumps(results))


def run_devices(n: int, meshes: list[str], a, processes: int = 1) -> list[dict]:
    """One child process per device count: XLA reads the fake device count once, when jax starts. With
    `processes` > 1, that many children of n devices each join one runtime on 127.0.0.1; if one fails, the others
    (waiting on it in a collective) are killed."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}".strip()}
    with tempfile.TemporaryDirectory() as d:
        report = Path(d) / "report.json"
        cmd = [sys.executable, "-m", "bench.scale", "--worker", str(report), "--preset", a.preset,
               "--meshes", ";".join(meshes), "--batch", str(a.batch), "--seq", str(a.seq), "--steps", str(a.steps)]
        if a.rl:
            cmd += ["--rl", "--generations", str(a.generations), "--new", str(a.new)]
        if processes == 1:
            subprocess.run(cmd, env=env, check=True)
            return json.loads(report.read_text())
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            address = f"127.0.0.1:{sock.getsockname()[1]}"
        procs = [subprocess.Popen([*cmd, "--address", address, "--processes", str(processes), "--process_id", str(i)],
                                  env=env) for i in range(processes)]
        while any(q.poll() is None for q in procs) and not any(q.poll() for q in procs):
            time.sleep(0.5)
        for q in procs:
            if q.poll() is None:
                q.kill()
            if q.wait():
                raise subprocess.CalledProcessError(q.returncode, q.args)
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


def size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB" if n >= 100 else f"{n} B"


def rollout_mb(comm: dict, new: int) -> float:
    """MB one rollout of `new` tokens moves per device."""
    return sum(comm["rollout"][k]["bytes"] + new * comm["token"][k]["bytes"] for k in COLLECTIVES) / 1e6


def rl_row(r: dict, new: int, columns: list[tuple[str, str]]) -> dict:
    """One printed row: seconds per step and its parts, the completions' mean reference log-prob (equal on every
    layout: each rollout draws from the key of its global position), then the sampler's `count / bytes` per kind
    of collective in `columns`, once per rollout and per new token, the MB a rollout moves per device, and the
    same program as GPU and TPU get it (parts=1): its collectives per token (all kinds) and MB per rollout."""
    row = {"devices": r["devices"], "processes": r["processes"], "mesh": r["mesh"], "step_s": r["step_s"],
           "rollout_s": r["rollout_s"], "score_s": r["reward_s"], "logps_s": r["logps_s"], "update_s": r["update_s"],
           "new tok/s": r["completion_tokens"] / r["rollout_s"], "first_step_s": r["first_step_s"],
           "ref_logp": f"{r['ref_logp']:.6f}"}
    comm = r["comm"]
    for where, kind in columns:
        c = comm[where][kind]
        name = kind if where == "rollout" else f"{kind}/token"
        row[name] = f"{c['count']} / {size(c['bytes'])}" if c["count"] else "-"
    row["comm MB/rollout"] = rollout_mb(comm, new)
    token = r["comm_parts=1"]["token"].values()
    row["parts=1: /token"] = f"{sum(c['count'] for c in token)} / {size(sum(c['bytes'] for c in token))}"
    row["parts=1: MB/rollout"] = rollout_mb(r["comm_parts=1"], new)
    row["peak_rss_MB"] = r["peak_rss_MB"]
    return row


def main_rl(a) -> None:
    """Every fake-device mesh, then the 2-process meshes: one table."""
    results = [r for n, meshes in MESHES.items() for r in run_devices(n, meshes, a)]
    results += run_devices(1, PROCESS_MESHES, a, processes=2)
    columns = [(where, kind) for where in ("rollout", "token") for kind in COLLECTIVES
               if any(r["comm"][where][kind]["count"] for r in results)]
    rows = [rl_row(r, a.new, columns) for r in results]
    print_table(rows, f"GRPO step, {a.preset} preset, {a.batch} prompts x {a.generations} completions of {a.new} new "
                      f"tokens, fp32, fake CPU devices and 2 processes (best of {a.steps}; sampler collectives: "
                      f"count / bytes per device, once per rollout and per new token; parts=1: the sampler as GPU "
                      f"and TPU compile it, without CPU's per-core weight blocks)")
    write_json(a.out or "bench/results/scale_rl.json",
               {"env": environment(), "preset": a.preset, "batch": a.batch, "generations": a.generations,
                "new": a.new, "steps": a.steps, "results": results})


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--worker" in argv:
        return worker(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rl", action="store_true", help="a GRPO step instead, split into rollout / score / logps / "
                                                     "update, also on 2 processes; the sampler's collectives")
    p.add_argument("--preset", help="model size (train.run's presets; default small, --rl --quick tiny)")
    p.add_argument("--batch", type=int, help="global batch, split over the devices: rows per step (default 8), "
                                             "--rl prompts per step (default 4)")
    p.add_argument("--seq", type=int, default=340, help="tokens per row")
    p.add_argument("--generations", type=int, default=2, help="--rl: completions per prompt")
    p.add_argument("--new", type=int, default=32, help="--rl: new tokens per completion")
    p.add_argument("--steps", type=int, default=3, help="timed steps per mesh (best is reported)")
    p.add_argument("--quick", action="store_true", help="seq 64, 2 steps: about a minute; --rl: the tiny preset, "
                                                        "16 new tokens, 1 step: about 2 minutes")
    p.add_argument("--out", help="default bench/results/scale.json, --rl scale_rl.json")
    a = p.parse_args(argv)
    a.preset = a.preset or ("tiny" if a.rl and a.quick else "small")
    a.batch = a.batch or (4 if a.rl else 8)
    if a.quick:
        a.seq, a.steps = 64, 2
        if a.rl:
            a.new, a.steps = 16, 1
    if a.rl:
        return main_rl(a)
    results = [r for n, meshes in MESHES.items() for r in run_devices(n, meshes, a)]
    rows = [table_row(r, results[0]["tokens/s"]) for r in results]
    print_table(rows, f"pretrain step, {a.preset} preset, batch {a.batch} x seq {a.seq}, fp32, fake CPU devices "
                      f"(best of {a.steps}; collectives: count / bytes per device per step)")
    write_json(a.out or "bench/results/scale.json",
               {"env": environment(), "preset": a.preset, "batch": a.batch, "seq": a.seq, "steps": a.steps,
                "results": results})


if __name__ == "__main__":
    main()

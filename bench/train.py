"""python -m bench.train: tokens/s and MFU of the real engine step, beside the reference PyTorch step.

The step is train.step.make_train_step on the pretrain loss (masked CE + aux), AdamW, clipping, donated state:
exactly what `python -m train.run` runs. On a shared machine a number means little alone, so everything of one
model is interleaved round by round: a 2048^3 matmul (the roofline MFU is measured against), each of our steps
(every dtype, accumulation and MoE dispatch asked for), and the reference's step in its own process
(bench/torch_reference.Worker, fp32, or `--ref_dtypes float32,bfloat16` for its bf16 autocast too). Each row
gives the median over rounds of the best step per round, the ratio to the reference's step of the same rounds,
and MFU against the same rounds' roofline; `check` says when the roofline moved by more than --noise between
rounds or when an MFU came out above 1 (the load changed under the measurement: repeat it).

    python -m bench.train                              # every model, fp32 and bf16, 3 rounds
    python -m bench.train --models moe --moe_impls block,sorted --dtypes float32
    python -m bench.train --cli                        # the step through `python -m train.run` (bench.cli)
"""
import argparse
import contextlib
import json
import os
import re
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench.common import (StepWorker, compile_seconds, environment, matmul_roofline, op_sources, peak_rss_mb,
                          print_table, profile_ops, profile_table, write_json)
from minimind_jax import MiniMindConfig, MiniMindForCausalLM, get_policy, moe
from train import optim
from train.state import TrainState
from train.step import make_train_step


def flops_per_token(cfg: MiniMindConfig, seq: int) -> float:
    """6 x matmul params a token passes through (fwd + bwd) + attention's QK^T and AV (fwd + bwd)."""
    H, hd = cfg.hidden_size, cfg.head_dim
    attn_proj = H * H * 2 + 2 * H * cfg.num_key_value_heads * hd
    mlp = 3 * H * cfg.intermediate_size
    if cfg.use_moe:
        mlp = mlp * (cfg.num_experts_per_tok + cfg.n_shared_experts) + H * cfg.n_routed_experts
    per_layer = attn_proj + mlp
    matmul = cfg.num_hidden_layers * per_layer + cfg.vocab_size * H
    attention = cfg.num_hidden_layers * 2 * 2 * seq * H * 3
    return 6 * matmul + attention


def lm_loss(model):
    import losses

    def loss_fn(params, batch, rng, frozen, extra):
        out = model.apply({"params": params}, batch["input_ids"], train=True, rngs={"dropout": rng})
        ce = losses.masked_ce(out.logits, batch["labels"], batch["loss_mask"])
        return ce + out.aux_loss, {"loss": ce + out.aux_loss}
    return loss_fn


def model_config(name: str) -> MiniMindConfig:
    """'small', 'moe' (MiniMind-2) or 'small3', 'moe3' (MiniMind-3: QK-norm, 4 KV heads, top-1 MoE)."""
    return MiniMindConfig.from_preset(name.removesuffix("3"), generation=3 if name.endswith("3") else 2)


class EngineStep:
    """The engine's compiled train step at one (model, dtype, accumulation, MoE dispatch), ready to time."""

    def __init__(self, preset: str, dtype: str, accumulation: int, batch: int, seq: int, impl: str | None = None):
        cfg = model_config(preset)
        model = MiniMindForCausalLM(cfg, policy=get_policy(dtype))
        params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
        tx = optim.adamw(optim.sft_schedule(5e-4, 1000 * accumulation, accumulation))
        # Own buffers per leaf: the step donates the state, and a buffer shared by two leaves cannot be donated.
        self.state = jax.tree.map(jnp.array, TrainState.create(params, tx, jax.random.PRNGKey(0)))
        ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (accumulation, batch, seq + 1)).astype(np.int32)
        self.data = {"input_ids": jnp.asarray(ids[..., :-1]), "labels": jnp.asarray(ids[..., 1:]),
                     "loss_mask": jnp.ones((accumulation, batch, seq), jnp.float32)}
        self.impl = impl or (moe.choose(batch * seq, cfg.n_routed_experts, cfg.num_experts_per_tok)
                             if cfg.use_moe else "")
        self.loss_fn, self.tx, self.times = lm_loss(model), tx, []
        with dispatch(self.impl):                         # read while tracing
            self.step = jax.jit(make_train_step(self.loss_fn, tx), donate_argnums=0)
            self.compile_s = compile_seconds(self.step, self.state, self.data, {})
            self.run(1)                                   # the first call also places the donated buffers
        self.times = []
        self.tokens = accumulation * batch * seq
        self.flops_per_token = flops_per_token(cfg, seq)

    def run(self, n: int) -> list[float]:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            self.state, m = self.step(self.state, self.data, {})
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t0)
        self.times.append(times)
        return times


REGIONS = (("routed experts", r"mlp/experts"), ("router + aux", r"mlp/(gate\b|gate/)|load_balance"),
           ("shared expert", r"shared_experts"), ("mlp", r"/mlp/"), ("attention", r"self_attn"),
           ("norms", r"layernorm|model/norm"), ("embedding + lm head", r"lm_head|embed"),
           ("model, other", r"MiniMindForCausalLM"))


def region(source: str) -> str:
    """The part of the step an op belongs to, from its source (op_name); loss, clipping and AdamW are the rest."""
    return next((name for name, pattern in REGIONS if re.search(pattern, source)), "loss + optimizer")


def profile(s: "EngineStep") -> list[dict]:
    """Where one step's time goes: seconds per step by region and op kind (own time of each XLA:CPU thunk,
    summed over threads, so independent thunks running side by side both count)."""
    with dispatch(s.impl):                           # no donation: the profile reruns one state
        compiled = jax.jit(make_train_step(s.loss_fn, s.tx)).lower(s.state, s.data, {}).compile()
    sources = op_sources(compiled.as_text())
    ops = profile_ops(compiled, s.state, s.data, {})
    return profile_table(ops, lambda op: region(sources.get(op, "")))


@contextlib.contextmanager
def dispatch(impl: str | None):
    """moe.IMPL set to impl (None or "": choose's) while a step is traced."""
    old, moe.IMPL = moe.IMPL, impl or moe.IMPL
    try:
        yield
    finally:
        moe.IMPL = old


def engine_step(preset: str, dtype: str, accumulation: int, batch: int, seq: int, steps: int) -> dict:
    """The best of `steps` steps alone (no interleaving): bench.device's rows."""
    s = EngineStep(preset, dtype, accumulation, batch, seq)
    best = min(s.run(steps))
    return {"tokens_per_s": s.tokens / best, "step_s": best, "compile_s": s.compile_s,
            "flops_per_token": s.flops_per_token}


def serve(preset: str, dtype: str, accumulation: int, batch: int, seq: int, impl: str | None) -> None:
    """One EngineStep for bench.common.StepWorker: its facts when compiled, then `n` -> n step times,
    `profile` -> where a step's time goes."""
    s = EngineStep(preset, dtype, accumulation, batch, seq, impl)
    print(json.dumps({"impl": s.impl, "tokens": s.tokens, "compile_s": s.compile_s}), flush=True)
    for line in sys.stdin:
        request = line.strip()
        answer = {"profile": profile(s)} if request == "profile" else {"steps_s": s.run(int(request))}
        print(json.dumps({**answer, "peak_rss_MB": peak_rss_mb()}), flush=True)


class Timed:
    """A StepWorker (ours or the reference's) and its step times, round by round."""

    def __init__(self, cmd: list[str], tokens: int, flops_per_token: float, impl: str = ""):
        self.worker, self.times = StepWorker(cmd), []
        self.impl = self.worker.info.get("impl", impl)
        self.compile_s = self.worker.info.get("compile_s", 0.0)
        self.tokens, self.flops_per_token = tokens, flops_per_token

    def round(self, steps: int):
        self.times.append(self.worker.steps(steps))


def serve_command(preset: str, dtype: str, accumulation: int, batch: int, seq: int, impl: str = "") -> list[str]:
    """The command of a process serving one EngineStep (`serve`), for a StepWorker."""
    return [sys.executable, "-m", "bench.train", "--serve", "--models", preset, "--dtypes", dtype, "--accums",
            str(accumulation), "--moe_impls", impl, "--batch", str(batch), "--seq", str(seq)]


def ours(preset: str, dtype: str, accumulation: int, batch: int, seq: int, impl: str) -> Timed:
    cmd = serve_command(preset, dtype, accumulation, batch, seq, impl)
    return Timed(cmd, accumulation * batch * seq, flops_per_token(model_config(preset), seq))


def reference(preset: str, dtype: str, batch: int, seq: int) -> Timed:
    cfg = MiniMindConfig.from_preset(preset)
    cmd = [sys.executable, "-m", "bench.torch_reference", "--serve", "--hidden", str(cfg.hidden_size), "--layers",
           str(cfg.num_hidden_layers), "--moe", str(int(cfg.use_moe)), "--batch", str(batch), "--seq", str(seq),
           "--dtype", dtype]
    return Timed(cmd, batch * seq, flops_per_token(cfg, seq), "loop" if cfg.use_moe else "")


def interleaved(steps: dict, roof_dtypes, rounds: int, n: int) -> tuple[dict, list]:
    """`rounds` rounds of [the roofline of each dtype, then `n` steps of each worker in turn].
    -> (roofline FLOP/s per dtype and round, the load average before each round)."""
    roof = {d: [] for d in roof_dtypes}
    loads = []
    for _ in range(rounds):
        loads.append(os.getloadavg()[0])
        for d in roof:
            roof[d].append(matmul_roofline(getattr(jnp, d)))
        for t in steps.values():
            t.round(n)
    return roof, loads


def rows_of(preset: str, steps: dict, roof: dict, loads: list, noise: float) -> list[dict]:
    """One row per measured step: the median over rounds of each round's best step, MFU against the same round's
    roofline, and (ours) the tokens/s ratio to the fp32 reference and to the fastest reference dtype, taken round by
    round."""
    tokens_per_s = lambda s: [s.tokens / min(t) for t in s.times]          # per round
    refs = [s for label, s in steps.items() if label[0] == "ref"]
    ref_fp32 = tokens_per_s(steps[("ref", "float32")]) if ("ref", "float32") in steps else None
    ref_best = [max(r) for r in zip(*map(tokens_per_s, refs))] if refs else None
    rows = []
    for label, s in steps.items():
        mine, dtype = label[0] == "ours", label[1]
        tps, roofs = tokens_per_s(s), roof[dtype]
        mfu = [t * s.flops_per_token / r for t, r in zip(tps, roofs)]
        row = {"impl": "minimind-jax" if mine else "reference (torch)", "model": preset, "dtype": dtype,
               "accum": label[2] if mine else 1, "moe": s.impl, "tokens/s": statistics.median(tps),
               "step_s": s.tokens / statistics.median(tps), "MFU": statistics.median(mfu)}
        if mine and ref_fp32:
            row["x_ref_fp32"] = statistics.median(t / r for t, r in zip(tps, ref_fp32))
            row["x_ref_best"] = statistics.median(t / r for t, r in zip(tps, ref_best))
        spread = max(roofs) / min(roofs) - 1
        checks = ([f"MFU {max(mfu):.2f} > 1"] if max(mfu) > 1 else []) + \
                 ([f"roofline spread {spread:.0%}"] if spread > noise else [])
        row.update(roof_GF=statistics.median(roofs) / 1e9, load=f"{min(loads):.1f}-{max(loads):.1f}",
                   check="; ".join(checks) or "ok", compile_s=s.compile_s,
                   peak_rss_MB=getattr(s, "peak_rss_MB", ""))
        rows.append(row)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=340)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (roofline, ours, reference)")
    p.add_argument("--steps", type=int, default=2, help="steps of each per round (its best counts)")
    p.add_argument("--quick", action="store_true", help="dense fp32 and bf16 at accumulation 1 only")
    p.add_argument("--no_torch", action="store_true", help="skip the PyTorch reference")
    p.add_argument("--models", default="small,moe,small3,moe3",
                   help="comma-separated among small, moe (MiniMind-2), small3, moe3 (MiniMind-3)")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated among float32, bfloat16")
    p.add_argument("--accums", default="1,8", help="dense models' accumulation steps (MoE: 1)")
    p.add_argument("--moe_impls", default="", help="MoE dispatches to time, e.g. block,sorted (default: choose's)")
    p.add_argument("--ref_dtypes", default="float32", help="the reference's: float32, bfloat16 (CPU autocast)")
    p.add_argument("--noise", type=float, default=0.10, help="roofline spread between rounds flagged in `check`")
    p.add_argument("--profile", action="store_true", help="also where each of our steps' time goes (jax.profiler)")
    p.add_argument("--cli", action="store_true", help="time the step through the CLI instead (bench.cli)")
    p.add_argument("--json", "--out", dest="json", default="bench/results/train.json")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)    # one step for a StepWorker
    a, rest = p.parse_known_args(argv)
    if a.cli:
        from bench import cli
        return cli.main(rest)
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")

    models, dtypes = a.models.split(","), a.dtypes.split(",")
    if a.quick:
        models, a.accums = ["small"], "1"
    if a.serve:
        return serve(models[0], dtypes[0], int(a.accums.split(",")[0]), a.batch, a.seq, a.moe_impls or None)
    rows, profiles = [], []
    for preset in models:
        cfg = model_config(preset)
        accums = [1] if cfg.use_moe else [int(x) for x in a.accums.split(",")]
        impls = a.moe_impls.split(",") if cfg.use_moe and a.moe_impls else [""]
        steps = {("ours", d, acc, impl): ours(preset, d, acc, a.batch, a.seq, impl)
                 for d in dtypes for acc in accums for impl in impls}
        # The reference is MiniMind-2 only (bench/torch_reference.py).
        if not a.no_torch and not preset.endswith("3"):
            steps.update({("ref", d): reference(preset, d, a.batch, a.seq) for d in a.ref_dtypes.split(",")})
        try:
            roof, loads = interleaved(steps, sorted(set(dtypes) | set(a.ref_dtypes.split(",")) | {"float32"}),
                                      a.rounds, a.steps)
            for label, t in steps.items():
                if label[0] == "ours":
                    t.peak_rss_MB = t.worker.ask("0")["peak_rss_MB"]
            rows += rows_of(preset, steps, roof, loads, a.noise)
            print_table([r for r in rows if r["model"] == preset], f"{preset}: {a.rounds} interleaved rounds")
            for label, t in steps.items() if a.profile else ():
                if label[0] == "ours":
                    load = os.getloadavg()[0]
                    profiles.append({"model": preset, "dtype": label[1], "accum": label[2], "moe": t.impl,
                                     "load": load, "regions": t.worker.ask("profile")["profile"]})
                    print_table(profiles[-1]["regions"], f"profile {preset} {label[1]} accum {label[2]} {t.impl} "
                                                         f"(load {load:.1f}): seconds per step, summed over threads")
        finally:
            for t in steps.values():
                t.worker.close()
    print_table(rows, f"train step, batch {a.batch} x seq {a.seq}: median over {a.rounds} rounds of the best of "
                      f"{a.steps} steps; x_ref against the reference's step of the same rounds")
    write_json(a.json, {"env": environment(), "args": vars(a), "rows": rows, "profiles": profiles})


if __name__ == "__main__":
    sys.exit(main())

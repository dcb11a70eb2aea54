"""python -m bench.train: tokens/s and MFU of the real engine step, beside the reference PyTorch step.

The step is train.step.make_train_step on the pretrain loss (masked CE + aux), AdamW, clipping, donated state:
exactly what `python -m train.run` runs. MFU is against a 2048^3 matmul timed in the same run.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench.common import compile_seconds, environment, matmul_roofline, peak_rss_mb, print_table, write_json
from minimind_jax import MiniMindConfig, MiniMindForCausalLM, get_policy
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


def engine_step(preset: str, dtype: str, accumulation: int, batch: int, seq: int, steps: int) -> dict:
    cfg = model_config(preset)
    model = MiniMindForCausalLM(cfg, policy=get_policy(dtype))
    params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    tx = optim.adamw(optim.sft_schedule(5e-4, 1000 * accumulation, accumulation))
    # Own buffers per leaf: the step donates the state, and a buffer shared by two leaves cannot be donated twice.
    state = jax.tree.map(jnp.array, TrainState.create(params, tx, jax.random.PRNGKey(0)))
    rng = np.random.default_rng(0)
    ids = rng.integers(0, cfg.vocab_size, (accumulation, batch, seq + 1)).astype(np.int32)
    data = {"input_ids": jnp.asarray(ids[..., :-1]), "labels": jnp.asarray(ids[..., 1:]),
            "loss_mask": jnp.ones((accumulation, batch, seq), jnp.float32)}
    step = jax.jit(make_train_step(lm_loss(model), tx), donate_argnums=0)
    compile_s = compile_seconds(step, state, data, {})
    state, m = step(state, data, {})
    jax.block_until_ready(m)
    best = float("inf")
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = step(state, data, {})
        jax.block_until_ready(m)
        best = min(best, time.perf_counter() - t0)
    tokens = accumulation * batch * seq
    return {"tokens_per_s": tokens / best, "step_s": best, "compile_s": compile_s,
            "flops_per_token": flops_per_token(cfg, seq)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=340)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--quick", action="store_true", help="dense fp32 and bf16 at accumulation 1 only")
    p.add_argument("--no_torch", action="store_true", help="skip the PyTorch reference")
    p.add_argument("--models", default="small,moe,small3,moe3",
                   help="comma-separated among small, moe (MiniMind-2), small3, moe3 (MiniMind-3)")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated among float32, bfloat16")
    p.add_argument("--out", default="bench/results/train.json")
    a = p.parse_args(argv)

    roof = {"float32": matmul_roofline(jnp.float32), "bfloat16": matmul_roofline(jnp.bfloat16)}
    print(f"matmul roofline: fp32 {roof['float32'] / 1e9:.0f} GFLOP/s, bf16 (f32 acc) {roof['bfloat16'] / 1e9:.0f} GFLOP/s")
    # MoE at accumulation 1 only (its step is the slowest)
    models, dtypes = a.models.split(","), a.dtypes.split(",")
    cases = [(m, d, acc) for m in ("small", "small3") if m in models for d in dtypes for acc in (1, 8)]
    cases += [(m, d, 1) for m in ("moe", "moe3") if m in models for d in dtypes]
    if a.quick:
        cases = [("small", "float32", 1), ("small", "bfloat16", 1)]
    rows = []
    for preset, dtype, acc in cases:
        r = engine_step(preset, dtype, acc, a.batch, a.seq, a.steps)
        rows.append({"impl": "minimind-jax", "model": preset, "dtype": dtype, "accum": acc,
                     "tokens/s": r["tokens_per_s"], "step_s": r["step_s"],
                     "MFU": r["tokens_per_s"] * r["flops_per_token"] / roof[dtype],
                     "compile_s": r["compile_s"], "peak_rss_MB": peak_rss_mb()})
        print_table(rows[-1:])
    if not a.no_torch:
        try:
            from bench.torch_reference import train_tokens_per_s
        except ImportError:
            print("torch is not installed: skipping the reference (pip install 'minimind-jax[torch]')")
        else:
            refs = [(m, m == "moe") for m in models if m in ("small", "moe") and not (a.quick and m == "moe")]
            for preset, moe in ([("small", False)] if a.quick else refs):
                cfg = MiniMindConfig.from_preset(preset)
                r = train_tokens_per_s(cfg.hidden_size, cfg.num_hidden_layers, moe, a.batch, a.seq, a.steps)
                rows.append({"impl": "reference (torch)", "model": preset, "dtype": "float32", "accum": 1,
                             "tokens/s": r["tokens_per_s"], "step_s": r["step_s"],
                             "MFU": r["tokens_per_s"] * flops_per_token(cfg, a.seq) / roof["float32"],
                             "compile_s": 0.0, "peak_rss_MB": peak_rss_mb()})
    print_table(rows, f"train step, batch {a.batch} x seq {a.seq} (best of {a.steps})")
    write_json(a.out, {"env": environment(), "roofline_flops": roof, "rows": rows})


if __name__ == "__main__":
    main()

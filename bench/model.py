"""python -m bench.model: the model library's speed on this machine, in one table.

- forward+backward of a masked CE loss (the train step without the optimizer), tokens/s and MFU against a
  2048^3 matmul timed in the same run (fp32; bf16 = bf16 compute with f32 accumulation against the bf16 matmul);
- generation, new tokens/s (batch 4, prompt 32, 128 new tokens, no early stop) with fp32 and bf16 weights, and
  the weight bytes read per second that implies (decoding reads every weight once per step);
- compile seconds of each.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench.common import compile_seconds, environment, matmul_roofline, peak_rss_mb, print_table, timeit, write_json
from minimind_jax import MiniMindConfig, MiniMindForCausalLM, get_policy
from minimind_jax.config import count_params
from minimind_jax.generate import _generate, decode_parts, decoding_model


def train_flops_per_token(cfg: MiniMindConfig, seq: int) -> float:
    """6 x the matmul weights a token passes through (active experts only) + attention's two products, fwd + bwd."""
    H, hd = cfg.hidden_size, cfg.head_dim
    attn = 2 * H * cfg.num_attention_heads * hd + 2 * H * cfg.num_key_value_heads * hd
    ffn = 3 * H * cfg.intermediate_size
    if cfg.use_moe:
        ffn = ffn * (cfg.num_experts_per_tok + cfg.n_shared_experts) + H * cfg.n_routed_experts
    matmul = cfg.num_hidden_layers * (attn + ffn) + cfg.vocab_size * H
    attention = cfg.num_hidden_layers * 2 * 2 * seq * cfg.num_attention_heads * hd      # QK^T and PV, fwd
    return 6 * matmul + 3 * attention


def masked_ce(model):
    def loss(params, ids, mask):
        out = model.apply({"params": params}, ids[:, :-1], train=True)
        logp = jax.nn.log_softmax(out.logits)                                    # [B, T, V] float32
        nll = -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
        return jnp.sum(nll * mask) / jnp.sum(mask) + out.aux_loss
    return jax.jit(jax.value_and_grad(loss))


def bench_train(cfg, params, precision: str, batch: int, seq: int, repeat: int) -> dict:
    model = MiniMindForCausalLM(cfg, get_policy(precision))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, seq + 1)), jnp.int32)
    mask = jnp.ones((batch, seq), jnp.float32)
    step = masked_ce(model)
    compile_s = compile_seconds(step, params, ids, mask)
    seconds = timeit(step, params, ids, mask, repeat=repeat)
    return {"tokens_per_s": batch * seq / seconds, "seconds": seconds, "compile_s": compile_s}


def bench_generate(cfg, params, batch: int, prompt: int, new: int, repeat: int) -> dict:
    model = MiniMindForCausalLM(cfg)
    ids = jnp.asarray(np.random.default_rng(0).integers(3, cfg.vocab_size, (batch, prompt)), jnp.int32)
    mask = jnp.ones_like(ids)
    run = jax.jit(lambda p, ids, mask, key: _generate(decoding_model(model, p), p, ids, mask, key,
                                                      max_new_tokens=new, temperature=0.8, top_k=0, top_p=1.0,
                                                      eos_token_id=None, pad_token_id=0,
                                                      parts=decode_parts()).sequences)   # as generate() runs it
    key = jax.random.key(0)
    compile_s = compile_seconds(run, params, ids, mask, key)
    seconds = timeit(run, params, ids, mask, key, repeat=repeat)
    weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    return {"new_tokens_per_s": batch * new / seconds, "seconds": seconds, "compile_s": compile_s,
            "weights_GB_per_s": weight_bytes * new / seconds / 1e9}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--minimind", type=int, default=2, choices=[2, 3], help="the model generation")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=340)
    p.add_argument("--gen_batch", type=int, default=4)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default="bench/results/model.json")
    a = p.parse_args(argv)

    cfg = MiniMindConfig.from_preset(a.preset, generation=a.minimind)
    params = jax.jit(MiniMindForCausalLM(cfg).init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    bf16_params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    flops = train_flops_per_token(cfg, a.seq)
    rows = []
    for precision in ("fp32", "bf16"):
        roof = matmul_roofline(jnp.float32 if precision == "fp32" else jnp.bfloat16)
        r = bench_train(cfg, params, precision, a.batch, a.seq, a.repeat)
        rows.append({"what": f"fwd+bwd {a.batch}x{a.seq}", "precision": precision, "tokens/s": r["tokens_per_s"],
                     "seconds": r["seconds"], "compile_s": r["compile_s"], "MFU": r["tokens_per_s"] * flops / roof,
                     "roofline_GFLOPs": roof / 1e9})
        print_table(rows[-1:])
    for precision, weights in (("fp32", params), ("bf16", bf16_params)):
        r = bench_generate(cfg, weights, a.gen_batch, a.prompt, a.new, a.repeat)
        rows.append({"what": f"generate b{a.gen_batch} p{a.prompt} +{a.new}", "precision": precision,
                     "tokens/s": r["new_tokens_per_s"], "seconds": r["seconds"], "compile_s": r["compile_s"],
                     "weights_GB/s": r["weights_GB_per_s"]})
        print_table(rows[-1:])
    title = (f"minimind-jax model, preset {a.preset} (MiniMind-{a.minimind}, {count_params(params) / 1e6:.2f}M params), "
             f"{train_flops_per_token(cfg, a.seq) / 1e6:.0f} MFLOP per trained token, peak RSS {peak_rss_mb():.0f} MB")
    print_table(rows, title)
    write_json(a.out, {"env": environment(), "preset": a.preset, "args": vars(a), "rows": rows})


if __name__ == "__main__":
    main()

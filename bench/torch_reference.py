"""The reference MiniMind train step in PyTorch (the reference's model, AdamW and clipping), for side-by-side timing in bench.train.

Written from the specification: RMSNorm, rotate-half RoPE, GQA through torch's fused SDPA (as the reference uses
when available), SwiGLU, tied embeddings, and the reference's MoE (a Python loop over experts while training).
Needs torch (`pip install 'minimind-jax[torch]'`); only the benchmark imports it. Runs on CPU or CUDA;
`dtype="bfloat16"` trains under bf16 autocast with fp32 weights, as the reference trains on GPU.
`python -m bench.torch_reference` times train steps in a process of their own and prints them as one JSON line
(bench.cli runs it between runs of the CLI); with `--serve` it keeps the step warm and times steps on demand
(bench.train interleaves it with its own steps, step by step).
"""
import argparse
import contextlib
import json
import math
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return self.weight * (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)


def rope_tables(head_dim, T, theta):
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    f = torch.outer(torch.arange(T).float(), freqs)
    return torch.cat([f.cos(), f.cos()], -1), torch.cat([f.sin(), f.sin()], -1)


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.h, self.kv, self.hd = c["heads"], c["kv_heads"], c["hidden"] // c["heads"]
        self.q_proj = nn.Linear(c["hidden"], self.h * self.hd, bias=False)
        self.k_proj = nn.Linear(c["hidden"], self.kv * self.hd, bias=False)
        self.v_proj = nn.Linear(c["hidden"], self.kv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.h * self.hd, c["hidden"], bias=False)

    def forward(self, x, cos, sin, past=None):
        """With `past` (k, v) [B, S, KV, HD] (HF's past_key_values), x holds the next tokens; returns (out, (k, v))."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.h, self.hd)
        k = self.k_proj(x).view(B, T, self.kv, self.hd)
        v = self.v_proj(x).view(B, T, self.kv, self.hd)
        q, k = rotate(q, cos[:, None], sin[:, None]), rotate(k, cos[:, None], sin[:, None])
        if past is not None:
            k, v = torch.cat([past[0], k], 1), torch.cat([past[1], v], 1)
        rep = self.h // self.kv
        kr, vr = (t.repeat_interleave(rep, dim=2) for t in (k, v))
        o = F.scaled_dot_product_attention(q.transpose(1, 2), kr.transpose(1, 2), vr.transpose(1, 2),
                                           is_causal=past is None)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, -1)), (k, v)


class MLP(nn.Module):
    def __init__(self, hidden, inter):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MoE(nn.Module):
    """The reference's training path: repeat tokens per chosen slot, loop over experts, weighted sum."""

    def __init__(self, c, inter):
        super().__init__()
        self.k, self.n = c["top_k"], c["experts"]
        self.experts = nn.ModuleList(MLP(c["hidden"], inter) for _ in range(self.n))
        self.shared = nn.ModuleList(MLP(c["hidden"], inter) for _ in range(c["shared"]))
        self.gate = nn.Linear(c["hidden"], self.n, bias=False)

    def forward(self, x):
        B, T, H = x.shape
        flat = x.view(-1, H)
        scores = self.gate(flat).softmax(-1)
        w, idx = torch.topk(scores, self.k, dim=-1)
        w = w / (w.sum(-1, keepdim=True) + 1e-20)
        rep = flat.repeat_interleave(self.k, dim=0)
        y = torch.empty_like(rep)
        flat_idx = idx.view(-1)
        for i, expert in enumerate(self.experts):
            y[flat_idx == i] = expert(rep[flat_idx == i]).to(y.dtype)
        y = (y.view(*w.shape, -1) * w.unsqueeze(-1)).sum(1).view(B, T, H)
        for s in self.shared:
            y = y + s(x)
        ce = x.new_zeros(B, self.n, dtype=torch.float32).scatter_add_(
            1, idx.view(B, -1), x.new_ones(B, T * self.k, dtype=torch.float32)).div_(T * self.k / self.n)
        aux = (ce * scores.view(B, T, -1).mean(1)).sum(1).mean() * 0.01
        return y, aux


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        inter = 64 * math.ceil(int(c["hidden"] * 8 / 3) / 64)
        self.input_layernorm, self.post_attention_layernorm = RMSNorm(c["hidden"]), RMSNorm(c["hidden"])
        self.self_attn = Attention(c)
        self.mlp = MoE(c, inter) if c["moe"] else MLP(c["hidden"], inter)

    def forward(self, x, cos, sin, past=None):
        a, kv = self.self_attn(self.input_layernorm(x), cos, sin, past)
        h = x + a
        out = self.mlp(self.post_attention_layernorm(h))
        out, aux = out if isinstance(out, tuple) else (out, x.new_zeros(()))
        return h + out, aux, kv


class MiniMind(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c["vocab"], c["hidden"])
        self.layers = nn.ModuleList(Block(c) for _ in range(c["layers"]))
        self.norm = RMSNorm(c["hidden"])
        self.lm_head = nn.Linear(c["hidden"], c["vocab"], bias=False)
        self.lm_head.weight = self.embed_tokens.weight
        self.theta = 1e6

    def forward(self, ids, past=None):
        """-> (logits, aux); with `past` (a list of per-layer (k, v), [] to start) -> (logits, aux, new past)."""
        start = past[0][0].shape[1] if past else 0
        cos, sin = rope_tables(self.layers[0].self_attn.hd, start + ids.shape[1], self.theta)
        cos, sin = cos[start:].to(ids.device), sin[start:].to(ids.device)
        if self.embed_tokens.weight.dtype != torch.float32:      # bf16 weights (decoding)
            cos, sin = cos.to(self.embed_tokens.weight.dtype), sin.to(self.embed_tokens.weight.dtype)
        x, aux, new = self.embed_tokens(ids), 0.0, []
        for i, layer in enumerate(self.layers):
            x, a, kv = layer(x, cos, sin, past[i] if past else None)
            aux, new = aux + a, new + [kv]
        logits = self.lm_head(self.norm(x))
        return (logits, aux) if past is None else (logits, aux, new)


def step_seconds(fn, repeat: int) -> list[float]:
    """Wall-clock seconds of each of `repeat` calls of fn(), after one warm-up call (CUDA work waited for)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def best_seconds(fn, repeat: int) -> float:
    """Best wall-clock seconds of fn() over `repeat` calls, after one warm-up call."""
    return min(step_seconds(fn, repeat))


def _config(hidden, layers, moe):
    return dict(hidden=hidden, layers=layers, heads=8, kv_heads=2, vocab=6400, moe=moe, top_k=2, experts=4, shared=1)


def _autocast(device: str, dtype: str):
    if dtype == "bfloat16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_train_step(model, batch: int, seq: int, device: str, dtype: str):
    """One reference train step (masked CE + aux, AdamW, global-norm clip 1.0) as a closure."""
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
    x = torch.randint(0, 6400, (batch, seq), device=device)
    y = torch.randint(0, 6400, (batch, seq), device=device)
    mask = torch.ones(batch, seq, device=device)

    def step():
        with _autocast(device, dtype):
            logits, aux = model(x)
        ce = F.cross_entropy(logits.float().view(-1, 6400), y.view(-1), reduction="none").view(batch, seq)
        loss = (ce * mask).sum() / mask.sum() + aux
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def train_tokens_per_s(hidden=512, layers=8, moe=False, batch=8, seq=340, steps=5, threads=None, device="cpu",
                       dtype="float32") -> dict:
    """Train steps of the reference recipe; dtype 'bfloat16': bf16 autocast over fp32 weights.
    -> tokens/s of the best step, its seconds, the median step's seconds, every step's."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = MiniMind(_config(hidden, layers, moe)).to(device)
    times = step_seconds(make_train_step(model, batch, seq, device, dtype), steps)
    return {"tokens_per_s": batch * seq / min(times), "step_s": min(times), "median_s": statistics.median(times),
            "steps_s": times, "params": sum(p.numel() for p in model.parameters())}


def _sampler(model, batch: int, prompt: int, new: int, device: str):
    ids = torch.randint(0, 6400, (batch, prompt), device=device)

    def sample(logits, temperature=0.85, top_p=0.85):
        probs = (logits.float() / temperature).softmax(-1)
        sorted_p, order = probs.sort(-1, descending=True)
        sorted_p[sorted_p.cumsum(-1) - sorted_p > top_p] = 0
        return order.gather(-1, torch.multinomial(sorted_p, 1))

    @torch.no_grad()
    def generate():
        logits, _, past = model(ids, [])
        token = sample(logits[:, -1])
        out = [token]
        for _ in range(new - 1):
            logits, _, past = model(token, past)
            token = sample(logits[:, -1])
            out.append(token)
        return torch.cat([ids] + out, 1)
    return generate


@torch.no_grad()
def decode_tokens_per_s(hidden=512, layers=8, batch=4, prompt=66, new=256, repeat=2, threads=None, device="cpu",
                        dtype="float32") -> dict:
    """New tokens/s of the reference's sampler (HF generate: a KV cache, one forward per token, temperature and
    top-p sampling on the last logits), run to full length; dtype 'bfloat16': bf16 weights."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = MiniMind(_config(hidden, layers, False)).eval().to(device)
    if dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    best = best_seconds(_sampler(model, batch, prompt, new, device), repeat)
    return {"new_tokens_per_s": batch * new / best, "seconds": best}


def grpo_step_seconds(hidden=512, layers=8, prompts=2, generations=8, prompt=66, new=256, repeat=2, device="cpu",
                      dtype="float32") -> dict:
    """Seconds of one reference-style GRPO step, from the reference's own pieces: sample `generations` completions
    of each prompt (the KV-cache sampler, bf16 weights when dtype is bfloat16), score them with a frozen reference
    copy (one no-grad forward), then one policy train step over prompt + completion."""
    torch.manual_seed(0)
    policy = MiniMind(_config(hidden, layers, False)).to(device)
    reference = MiniMind(_config(hidden, layers, False)).eval().to(device)
    sampler_model = MiniMind(_config(hidden, layers, False)).eval().to(device)
    if dtype == "bfloat16":
        sampler_model, reference = sampler_model.to(torch.bfloat16), reference.to(torch.bfloat16)
    rows = prompts * generations
    generate = _sampler(sampler_model, rows, prompt, new, device)
    train = make_train_step(policy, rows, prompt + new, device, dtype)
    seqs = generate()

    @torch.no_grad()
    def score():
        reference(seqs)

    parts = {"rollout_s": best_seconds(generate, repeat), "score_s": best_seconds(score, repeat),
             "update_s": best_seconds(train, repeat)}
    return {**parts, "step_s": sum(parts.values())}


def serve(hidden, layers, moe, batch, seq, dtype):
    """The reference's train step kept warm for bench.common.StepWorker: one JSON line of facts when ready, then
    each `n` on stdin answered with the seconds of n more steps (one JSON line), until stdin closes."""
    torch.manual_seed(0)
    step = make_train_step(MiniMind(_config(hidden, layers, moe)), batch, seq, "cpu", dtype)
    step()
    print(json.dumps({"threads": torch.get_num_threads(), "torch": torch.__version__}), flush=True)
    for line in sys.stdin:
        times = []
        for _ in range(int(line)):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        print(json.dumps({"steps_s": times}), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description="time reference train steps; prints one JSON line (--serve: on demand)")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--moe", type=int, default=0)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=340)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--serve", action="store_true", help="time steps on demand: `n` on stdin -> n step times")
    a = p.parse_args(argv)
    if a.serve:
        return serve(a.hidden, a.layers, bool(a.moe), a.batch, a.seq, a.dtype)
    r = train_tokens_per_s(a.hidden, a.layers, bool(a.moe), a.batch, a.seq, a.steps, dtype=a.dtype)
    print(json.dumps({**r, "threads": torch.get_num_threads(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()

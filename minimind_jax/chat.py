"""Talk to a MiniMind model, like the reference's eval script: the chat template applied, answers streamed.

    python -m minimind_jax.chat --weight full_sft --prompt "What is 3 + 4?"      # one shot
    python -m minimind_jax.chat --weight out/full_sft_512                         # interactive (empty line quits)
    python -m minimind_jax.chat --weight none --preset tiny --prompt "hi"         # a random model, for a smoke test

--weight takes a stage name (<out_dir>/<name>_<hidden>[_moe]/weights.safetensors, the trainer's layout), a run
directory, a .safetensors file, a reference .pth (needs torch), or `none`. A config.json beside the weights wins
over --preset.

The reference's eval flags mean what they mean there: `--save_dir` is --out_dir; `--load_from model` (its default)
reads --weight from there, any other value is a path: a run directory, a weights file, or a Hugging Face folder
written by `python -m minimind_jax.export --format hf`; `--historys N` keeps the last N messages (an even number:
N/2 question-answer pairs) like --history_cnt; `--inference_rope_scaling` turns YaRN on; `--lora_weight None` is no
adapters.
"""
import argparse
import dataclasses
import sys
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from minimind_jax.config import MiniMindConfig
from minimind_jax.convert import load_weights, params_from_torch, read_state_dict
from minimind_jax.generate import decoding_model, sample_token
from minimind_jax.lora import apply_lora, lora_from_torch
from minimind_jax.model import KVCache, MiniMindForCausalLM
from minimind_jax.precision import get_policy
from minimind_jax.tokenizer import Tokenizer

PROMPT_BUCKET = 64      # prompts are left-padded to a multiple of this: one compiled prefill per bucket


def weights_path(weight: str, out_dir: str, cfg: MiniMindConfig) -> Path:
    """A stage name, a run directory or a file -> the weights file (FileNotFoundError naming what was tried)."""
    path = Path(weight)
    if path.is_file():
        return path
    if path.is_dir():
        path = path / "weights.safetensors"
    elif path.suffix not in (".safetensors", ".pth"):
        path = Path(out_dir) / f"{weight}_{cfg.hidden_size}{'_moe' if cfg.use_moe else ''}" / "weights.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"--weight {weight}: {path} does not exist (train that stage first, or pass a path)")
    return path


def load_model(args) -> tuple[MiniMindForCausalLM, dict]:
    cfg = MiniMindConfig.from_preset(args.preset, **{k: v for k, v in (("hidden_size", args.hidden_size),
                                                                        ("num_hidden_layers", args.num_hidden_layers),
                                                                        ("use_moe", args.use_moe)) if v is not None})
    source = args.weight if args.load_from in (None, "model") else args.load_from
    if source == "none":
        init = MiniMindForCausalLM(cfg, get_policy(args.dtype)).init
        params = jax.jit(init)(jax.random.key(args.seed), jnp.zeros((1, 8), jnp.int32))["params"]
    elif (Path(source) / "model.safetensors").is_file():         # a Hugging Face export
        from minimind_jax.export import read_hf
        cfg, sd = read_hf(source)
        params = jax.tree.map(jnp.asarray, params_from_torch(sd, cfg, source=source))
    else:
        path = weights_path(source, args.out_dir, cfg)
        if (path.parent / "config.json").exists():               # the weights' own config
            cfg = MiniMindConfig.from_json((path.parent / "config.json").read_text())
        params = load_weights(path, cfg)
    if args.inference_rope_scaling:
        cfg = dataclasses.replace(cfg, inference_rope_scaling=True)
    if args.lora_weight not in (None, "None", "none"):
        lora_path = weights_path(args.lora_weight, args.out_dir, cfg)
        params = apply_lora(params, lora_from_torch(read_state_dict(lora_path), params, cfg, source=str(lora_path)))
    return MiniMindForCausalLM(cfg, get_policy(args.dtype)), params


@partial(jax.jit, static_argnames=("model", "length"))
def prefill(model, params, ids, mask, *, length):
    """Run left-padded prompts [B, P] into a fresh cache of `length` slots; -> (last logits [B, V], cache)."""
    out = model.apply({"params": params}, ids, mask, cache=KVCache.create(model.cfg, ids.shape[0], length,
                                                                          model.policy.compute_dtype),
                      logits_last=1)
    return out.logits[:, -1], out.cache


_sample = jax.jit(sample_token, static_argnames=("temperature", "top_k", "top_p"))


@partial(jax.jit, static_argnames=("model",))
def decode_step(model, params, token, cache):
    """One token per row [B] at the cache's next position; -> (logits [B, V], cache)."""
    out = model.apply({"params": params}, token[:, None], cache=cache)
    return out.logits[:, -1], out.cache


def stream(model, params, prompt_ids: list[int], *, rng, max_new_tokens: int, temperature: float, top_k: int = 0,
           top_p: float = 1.0, eos_token_id: int = 2):
    """Yield completion token ids one at a time (eos not included). Same model and sampling as `generate`."""
    model = decoding_model(model, params)
    P = -(-len(prompt_ids) // PROMPT_BUCKET) * PROMPT_BUCKET
    ids = np.zeros((1, P), np.int32)
    ids[0, P - len(prompt_ids):] = prompt_ids                    # left padding: the prompt ends at position P - 1
    mask = (np.arange(P) >= P - len(prompt_ids)).astype(np.int32)[None]
    logits, cache = prefill(model, params, jnp.asarray(ids), jnp.asarray(mask), length=P + max_new_tokens)
    token = None
    for _ in range(max_new_tokens):
        if token is not None:
            logits, cache = decode_step(model, params, token, cache)
        rng, key = jax.random.split(rng)
        token = _sample(logits, key, temperature=temperature, top_k=top_k, top_p=top_p)
        if int(token[0]) == eos_token_id:
            return
        yield int(token[0])


def reply(model, params, tokenizer: Tokenizer, messages: list[dict], args, rng, out=None) -> str:
    """Stream one assistant turn to `out` (stdout) and return its text."""
    out = out or sys.stdout
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    prompt = tokenizer.encode(text)[-args.max_seq_len:]
    ids, shown = [], ""
    for t in stream(model, params, prompt, rng=rng, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                    top_k=args.top_k, top_p=args.top_p, eos_token_id=tokenizer.eos_id):
        ids.append(t)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if not text.endswith("\ufffd"):                          # wait for the rest of a multi-byte character
            out.write(text[len(shown):])
            out.flush()
            shown = text
    out.write(tokenizer.decode(ids, skip_special_tokens=True)[len(shown):] + "\n")
    return tokenizer.decode(ids, skip_special_tokens=True)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The flags that choose the model and tokenizer (shared with the server)."""
    p.add_argument("--weight", default="full_sft", help="stage name, run dir, .safetensors, .pth, or none")
    p.add_argument("--load_from", default="model",
                   help="'model': --weight from --out_dir; else a run dir, weights file or Hugging Face export")
    p.add_argument("--lora_weight", default=None, help="LoRA adapters to merge (stage name, run dir or file); "
                                                       "None: none")
    p.add_argument("--out_dir", "--save_dir", dest="out_dir", default="out", help="where stage names are looked up")
    p.add_argument("--preset", default="small", choices=["tiny", "small", "base", "moe"])
    p.add_argument("--hidden_size", type=int, default=None)
    p.add_argument("--num_hidden_layers", type=int, default=None)
    p.add_argument("--use_moe", type=lambda s: bool(int(s)), default=None)
    p.add_argument("--inference_rope_scaling", action="store_true", help="YaRN: 16x the 2048 trained positions")
    p.add_argument("--tokenizer", default=None, help="tokenizer dir or file (default: the embedded one)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--max_new_tokens", type=int, default=512)
    p.add_argument("--max_seq_len", type=int, default=1024, help="prompt tokens kept (the most recent)")
    p.add_argument("--seed", type=int, default=42)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m minimind_jax.chat", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--prompt", default=None, help="one question, answered once; without it, an interactive loop")
    p.add_argument("--temperature", type=float, default=0.85)
    p.add_argument("--top_p", type=float, default=0.85)
    p.add_argument("--top_k", type=int, default=0)
    p.add_argument("--history_cnt", "--historys", dest="history_cnt", type=int, default=0,
                   help="previous messages kept in the prompt (even: question-answer pairs); 0 keeps none")
    return p


def open_model(args):
    """(tokenizer, model, params) of the CLIs' flags, or None after printing the one-line error (a missing or
    unfit file, a .pth without torch) — chat, serve and evaluate share it."""
    try:
        return (Tokenizer.load(args.tokenizer), *load_model(args))
    except (OSError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    opened = open_model(args)
    if opened is None:
        return 2
    tokenizer, model, params = opened
    rng = jax.random.key(args.seed)
    history: list[dict] = []
    while True:
        if args.prompt is not None:
            question = args.prompt
        else:
            try:
                question = input("user: ").strip()
            except EOFError:
                break
            if not question:
                break
        messages = (history[-args.history_cnt:] if args.history_cnt else []) + [{"role": "user", "content": question}]
        rng, key = jax.random.split(rng)
        print("assistant: ", end="", flush=True)
        answer = reply(model, params, tokenizer, messages, args, key)
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        if args.prompt is not None:
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())

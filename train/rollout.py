"""RL's one home: a batch of prompts becomes a batch of scored rollouts, ready for the jitted update.

    prompts [A, B, P] -> G completions each (jitted sampler, a key per rollout) -> rewards (host: they read strings)
      -> log-probs of the reference and of the sampling policy (one jitted forward each)
      -> every array [A, B * G, ...] (micro-batch axis first, like every engine batch), global on the mesh

Across processes every step is one program over the whole mesh: each process feeds its prompts, the sampler and
the forwards run with the params however they are split, and each process scores only its own rows.

Sequences are [prompt (left-padded) | completion]; positions are indices in that padded sequence both while
sampling and while scoring, so the log-probs the update recomputes are the sampler's.

Rewards are a weighted sum of the parts the flags choose: the reference's <think>/<answer> format and tag reward
(`--reasoning 1`), an exact-answer reward on rows with a reference answer (`--answer_reward W`), a reward model's
score (`--reward_model`; clipped to [-3, 3] and mixed 0.4/0.6 with the answer-only score in reasoning mode, the
reference's rule), and a user function (`--reward_fn`).
"""
import importlib
import importlib.util
import os
import sys
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import losses
from losses import rewards as R
from minimind_jax import MiniMindConfig
from minimind_jax.generate import generate
from minimind_jax.paths import resolve_weights
from train import rng
from train.config import TrainConfig
from train.errors import UsageError
from train.mesh import process_rows, replicated, reshard, to_global, to_local


# ---- sampling and scoring under a policy ---------------------------------------------------------------------------

def sample(run, params, prompt_ids, prompt_mask, key, temperature: float | None = None, prompt_groups: int = 1):
    """[N, P] prompts -> (sequences int32 [N, P + R], completion_mask int32 [N, R]); `temperature` overrides the
    rollout's (0: greedy, for evaluation); `prompt_groups`: generate's (runs of identical prompts)."""
    r, tok = run.config.rollout, run.tokenizer
    if r.dtype == "bfloat16":
        params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
    # Params split over fsdp (or experts over their axis) are gathered once per rollout: left split, the decoding
    # loop would gather every layer's weights again at every token (a few dozen collectives per token).
    whole = replicated(run.mesh)
    params = jax.tree.map(lambda p: reshard(p, whole) if isinstance(p, jax.Array) else p, params)
    out = generate(run.model, params, jnp.asarray(prompt_ids), jnp.asarray(prompt_mask), rng=key,
                   max_new_tokens=r.max_gen_len, temperature=r.temperature if temperature is None else temperature,
                   top_k=r.top_k, top_p=r.top_p, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id,
                   prompt_groups=prompt_groups)
    return out.sequences, out.completion_mask


@partial(jax.jit, static_argnames=("model",))
def completion_logps(model, params, sequences, attention_mask, completion_mask):
    """Log-prob of each completion token, [N, R]; the logits at position t predict token t + 1."""
    R = completion_mask.shape[1]
    logits = model.apply({"params": params}, sequences[:, :-1], attention_mask=attention_mask[:, :-1],
                         logits_last=R).logits                                # [N, R, V]
    return losses.token_logprobs(logits, sequences[:, -R:])             # [N, R]


def attention_mask(prompt_mask, completion_mask):
    """Keys a completion token may attend to: the real prompt tokens and the completion up to its eos."""
    return jnp.concatenate([jnp.asarray(prompt_mask), jnp.asarray(completion_mask)], axis=1)


def decode(tokenizer, sequences, completion_mask, prompt_len: int) -> list[str]:
    """Completion texts up to (not including) the first eos."""
    ids, mask = np.asarray(sequences)[:, prompt_len:], np.asarray(completion_mask)
    return [tokenizer.decode([t for t, m in zip(row, keep) if m and t != tokenizer.eos_id])
            for row, keep in zip(ids, mask)]


def policy_logps(model, params, batch, key):
    """In the loss: the policy's completion log-probs [N, R] (differentiable) and its MoE aux loss."""
    seq, amask, cmask = batch["sequences"], batch["attention_mask"], batch["completion_mask"]
    R = cmask.shape[1]
    out = model.apply({"params": params}, seq[:, :-1], attention_mask=amask[:, :-1], train=True,
                      rngs={"dropout": key}, logits_last=R)
    return losses.token_logprobs(out.logits, seq[:, -R:]), out.aux_loss


# ---- rewards -------------------------------------------------------------------------------------------------------

def load_reward_fn(spec: str):
    """`--reward_fn module:function` or `path/to/file.py:function`. This runs the user's code. A module name is
    imported from the installed packages, not from the current directory (which `python -m` would put first): name
    a file to use one from there."""
    module, _, name = spec.rpartition(":")
    try:
        if module.endswith(".py"):
            spec_ = importlib.util.spec_from_file_location(Path(module).stem, module)
            if spec_ is None or not Path(module).is_file():
                raise ImportError(f"no such file {module}")
            mod = importlib.util.module_from_spec(spec_)
            spec_.loader.exec_module(mod)
        else:
            here = {"", ".", os.getcwd()}
            saved = sys.path[:]
            sys.path[:] = [p for p in sys.path if p not in here]
            try:
                mod = importlib.import_module(module)
            finally:
                sys.path[:] = saved
        return getattr(mod, name)
    except (ImportError, AttributeError, ValueError, SyntaxError) as e:
        raise UsageError(f"--reward_fn {spec}: cannot import it ({e}); expected module:function or "
                         f"file.py:function") from None


def reward_model_scorer(config: TrainConfig, tokenizer):
    """texts -> float32 [N] scores of the reward model named by --reward_model."""
    from minimind_jax.heads import load_reward_model
    cfg: MiniMindConfig = config.model
    try:
        path = resolve_weights(config.reward.reward_model, config.checkpoint.out_dir, cfg, "--reward_model")
        model, params = load_reward_model(path, cfg)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(f"--reward_model {config.reward.reward_model}: {e}") from None
    scores = jax.jit(lambda ids, mask: model.apply({"params": params}, ids, mask))
    keep = config.data.max_seq_len + config.rollout.max_gen_len

    def score_fn(texts):
        rows = [tokenizer.encode(t)[-keep:] for t in texts]
        ids = np.zeros((len(rows), max(map(len, rows))), np.int32)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = row
        return np.asarray(scores(ids, (ids != tokenizer.pad_id).astype(np.int32)))
    return score_fn


def make_scorer(config: TrainConfig, tokenizer):
    """(prompts, responses, answers) -> (total float32 [N], {part: float32 [N]}), built once per run.

    The rule parts follow the model's generation: MiniMind-2's format/tag and exact-answer rewards, a reward model
    mixed 0.4/0.6 with the answer-only score in reasoning mode; MiniMind-3's rule reward (unless --rule_reward 0)
    and a reward model's score clipped to [-3, 3]. A user function (--reward_fn) adds to either."""
    from losses import rewards3
    rc, generation = config.reward, config.model.generation
    rm = reward_model_scorer(config, tokenizer) if rc.reward_model else None
    user = load_reward_fn(rc.reward_fn) if rc.reward_fn else None

    def rule_parts(prompts, responses, answers) -> dict:
        if generation == 3:
            parts = {"rule": rewards3.rule_rewards(responses)} if rc.rule_reward else {}
            if rm is not None:
                parts["rm"] = np.clip(np.asarray(rm([p + r for p, r in zip(prompts, responses)]), np.float32), -3, 3)
            return parts
        parts = {}
        if rc.reasoning:
            parts["format"] = R.format_reward(responses)
        if rc.answer_weight:
            parts["answer"] = rc.answer_weight * R.answer_reward(responses, answers)
        if rm is not None:
            parts["rm"] = R.reward_model_reward(prompts, responses, rm, reasoning=rc.reasoning)
        return parts

    def score(prompts: list[str], responses: list[str], answers: list[str]):
        parts = rule_parts(prompts, responses, answers)
        if user is not None:
            parts["custom"] = np.asarray(user(list(prompts), list(responses), list(answers)), np.float32)
        total = sum(parts.values()) if parts else np.zeros(len(responses), np.float32)
        return np.asarray(total, np.float32), parts
    return score


# ---- the rollout batch ---------------------------------------------------------------------------------------------

def row_keys(seed: int, step: int, positions) -> jax.Array:
    """uint32 [..., 2]: the sampling key of each rollout from its global position in the step ([A, B * G] flattened),
    so a row draws the same completion whatever the device or process count."""
    base = rng.draw(seed, "rollout", step)
    positions = jnp.asarray(positions, jnp.uint32)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(positions.reshape(-1)).reshape(*positions.shape, 2)


@partial(jax.jit, static_argnames=("model",))
def rollout_logps(model, params, sequences, attention_mask, completion_mask):
    """completion_logps of an [A, N, ...] rollout batch, [A, N, R]."""
    flat = lambda x: x.reshape(-1, *x.shape[2:])
    A, N, R = completion_mask.shape
    return completion_logps(model, params, flat(sequences), flat(attention_mask), flat(completion_mask)).reshape(A, N, R)


def rollout_batch(run, sample_params, frozen, arrays, host, step, *, num_generations=1, old_params=None):
    """(batch, host info) for one optimizer step: the batch's arrays are global jax.Arrays [A, B * G, ...] on the
    mesh (rows split like every engine batch), so what a stage computes from them next (group or batch
    statistics, a tracker) sees the whole step, on any number of processes.

    `arrays` and `host` hold this process's prompts. Sampling and scoring run on the whole mesh (params may be
    split across hosts; the compiler gathers what each layer needs), each row with its own key; the rewards are
    computed on this process's rows only (a user --reward_fn sees plain Python lists of them). `info` holds this
    process's means (the engine averages them over processes)."""
    mesh, seed = run.mesh, run.config.seed
    A, B, P = arrays["prompt_ids"].shape
    G = num_generations
    local = lambda x: np.repeat(x, G, axis=1)                                   # [A, B, ...] -> [A, B * G, ...]
    N = B * G * mesh.devices.size // len(mesh.local_devices)                    # rollouts per micro-batch, all processes
    positions = np.arange(A)[:, None] * N + process_rows(mesh, N)               # [A, B * G]: ours, in the step
    glob = to_global({"prompt_ids": local(arrays["prompt_ids"]), "prompt_mask": local(arrays["prompt_mask"]),
                      "keys": np.asarray(row_keys(seed, step, positions)), "index": local(arrays["index"])}, mesh)
    flat = lambda x: x.reshape(-1, *x.shape[2:])

    t0 = time.perf_counter()
    sequences, completion_mask = sample(run, sample_params, flat(glob["prompt_ids"]), flat(glob["prompt_mask"]),
                                        flat(glob["keys"]))
    sequences = sequences.reshape(A, N, -1)                                      # [A, N, P + R], all processes'
    completion_mask = completion_mask.reshape(A, N, -1)                          # [A, N, R]
    amask = jnp.concatenate([glob["prompt_mask"], completion_mask], axis=-1)
    # Dispatched before the host scores: the device computes the log-probs while the rewards are read.
    batch = {"sequences": sequences, "attention_mask": amask, "completion_mask": completion_mask,
             "index": glob["index"], "ref_logps": rollout_logps(run.model, frozen["ref"], sequences, amask,
                                                                completion_mask)}
    if old_params is not None:
        batch["old_logps"] = rollout_logps(run.model, old_params, sequences, amask, completion_mask)
    mine = lambda x: flat(to_local(x, mesh))                                     # this process's rows, [n, ...]
    seq_here, mask_here = mine(sequences), mine(completion_mask)
    t1 = time.perf_counter()
    responses = decode(run.tokenizer, seq_here, mask_here, P)
    repeat = lambda xs: [x for x in xs for _ in range(G)]
    rewards, components = run.score(repeat(host["prompts"]), responses, repeat(host["answers"]))
    t2 = time.perf_counter()
    batch["rewards"] = to_global({"r": rewards.reshape(A, -1)}, mesh)["r"]
    jax.block_until_ready(batch)
    t3 = time.perf_counter()
    lengths = mask_here.sum(-1)
    info = {"reward": float(np.mean(rewards)), **{f"reward_{k}": float(np.mean(v)) for k, v in components.items()},
            "response_len": float(lengths.mean()), "completion_tokens": int(lengths.sum()),
            "rollout_s": t1 - t0, "reward_s": t2 - t1, "logps_s": t3 - t2,
            # one completion to read beside the numbers (the engine prints it at every log line)
            "sample_prompt": repeat(host["prompts"])[0], "sample_response": responses[0],
            "sample_reward": float(rewards[0])}
    return batch, info

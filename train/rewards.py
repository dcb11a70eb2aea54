"""The reward of a rollout: a weighted sum of the parts chosen on the command line.

- format (`--reasoning 1`): the reference's <think>/<answer> format + tag reward;
- answer (`--answer_reward W`): exact-answer reward on verifiable prompts (rows with a reference answer);
- reward model (`--reward_model NAME|PATH`): a MiniMind reward model's score, clipped to [-3, 3], mixed 0.4/0.6
  with the answer-only score in reasoning mode (the reference's rule);
- any callable (`--reward_fn module:function`), called as fn(prompts, responses, answers) -> float[B].
"""
import importlib

import jax
import jax.numpy as jnp
import numpy as np

from losses import rewards as R
from train.stage import UsageError


def load_callable(spec: str):
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise UsageError(f"--reward_fn {spec}: cannot import it ({e}); expected module:function") from None


def reward_model_scorer(run):
    """texts -> float32 [N] scores of the reward model named by --reward_model (built once per run)."""
    if "reward_model" not in run.cache:
        from train.stage import resolve_weight
        from train.stages.reward import load_reward_model
        path = resolve_weight(run.args.out_dir, run.args.reward_model, run.cfg, "--reward_model")
        model, params = load_reward_model(path, run.cfg)
        scores = jax.jit(lambda ids, mask: model.apply({"params": params}, ids, mask))
        tok = run.tokenizer

        def score_fn(texts):
            rows = [tok.encode(t)[-run.args.max_seq_len - run.args.max_gen_len:] for t in texts]
            ids = np.zeros((len(rows), max(map(len, rows))), np.int32)
            for i, row in enumerate(rows):
                ids[i, :len(row)] = row
            return np.asarray(scores(ids, (ids != tok.pad_id).astype(np.int32)))
        run.cache["reward_model"] = score_fn
    return run.cache["reward_model"]


def score(run, prompts: list[str], responses: list[str], answers: list[str]) -> tuple[np.ndarray, dict]:
    """(total float32 [N], {part: float32 [N]}) for N completions."""
    a = run.args
    parts = {}
    if a.reasoning:
        parts["format"] = R.format_reward(responses)
    if a.answer_reward:
        parts["answer"] = a.answer_reward * R.answer_reward(responses, answers)
    if a.reward_model:
        parts["rm"] = R.reward_model_reward(prompts, responses, reward_model_scorer(run), reasoning=bool(a.reasoning))
    if a.reward_fn:
        parts["custom"] = np.asarray(load_callable(a.reward_fn)(prompts, responses, answers), np.float32)
    total = sum(parts.values()) if parts else np.zeros(len(responses), np.float32)
    return np.asarray(total, np.float32), parts

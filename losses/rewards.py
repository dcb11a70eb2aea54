"""Rewards for the RL stages: strings in, float32 [B] out. Host-side Python (regexes, a scorer), never jitted.

A reward function is `(prompts, responses, answers) -> float32[B]` (`RewardFn`): prompts are the chat-templated
prompts ending with `<|im_start|>assistant\\n`, responses the decoded completions (up to their eos), answers the
reference answers ("" where a prompt has none). The trainer adds the parts chosen on the command line with
`combine_rewards`.
"""
import math
import re
from typing import Callable, Mapping, Sequence

import numpy as np

RewardFn = Callable[[Sequence[str], Sequence[str], Sequence[str]], np.ndarray]
ScoreFn = Callable[[list[str]], np.ndarray]       # texts -> float [B], e.g. a reward model

FORMAT = (re.compile(r"^<think>\n.*?\n</think>\n<answer>\n.*?\n</answer>$", re.S),
          re.compile(r"^<think>\n.*?\n</think>\n\n<answer>\n.*?\n</answer>$", re.S))
TAGS = ("<think>", "</think>", "<answer>", "</answer>")
ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
END_OF_TURN = "<|im_end|>\n"


def format_reward(responses: Sequence[str]) -> np.ndarray:
    """The reference's reasoning-format reward, float32 [B] in [0, 1.5]:
    0.5 if the response is exactly `<think>\\n…\\n</think>\\n<answer>\\n…\\n</answer>` (a blank line allowed before
    `<answer>`; `$` also accepts one trailing newline, as Python's re does), plus 0.25 for each of the four tags that
    occurs exactly once."""
    return np.array([0.5 * any(p.match(r) for p in FORMAT) + 0.25 * sum(r.count(t) == 1 for t in TAGS)
                     for r in responses], np.float32)


def _number(text: str) -> float | None:
    """The value of a text that is one number ("42", "-3.5", "1,000"), else None."""
    text = THOUSANDS.sub("", text.strip())
    return float(text) if NUMBER.fullmatch(text) else None


def extract_answer(response: str) -> str:
    """The stripped content of the first `<answer>…</answer>`, else the last non-empty line."""
    m = ANSWER.search(response)
    if m:
        return m.group(1).strip()
    lines = [line for line in response.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def answer_matches(response: str, answer: str) -> bool:
    """Whether a response gives the reference answer. A numeric reference is compared numerically with the last
    number of the `<answer>` content (else of the whole response), so "42", " 42.0 " and "6 * 7 = 42" match "42";
    any other reference must equal the extracted answer up to whitespace. An empty reference never matches."""
    reference = " ".join(answer.split())
    if not reference:
        return False
    target = _number(reference)
    if target is None:
        return " ".join(extract_answer(response).split()) == reference
    m = ANSWER.search(response)
    numbers = NUMBER.findall(THOUSANDS.sub("", m.group(1) if m else response))
    return bool(numbers) and math.isclose(float(numbers[-1]), target, rel_tol=1e-9, abs_tol=1e-9)


def answer_reward(responses: Sequence[str], answers: Sequence[str]) -> np.ndarray:
    """Exact-answer reward for verifiable prompts, float32 [B]: 1 where `answer_matches`, else 0."""
    if len(responses) != len(answers):
        raise ValueError(f"losses/rewards.py: {len(responses)} responses but {len(answers)} answers")
    return np.array([answer_matches(r, a or "") for r, a in zip(responses, answers)], np.float32)


def reward_model_reward(prompts: Sequence[str], responses: Sequence[str], score_fn: ScoreFn, *,
                        reasoning: bool = False, scale: float = 3.0) -> np.ndarray:
    """A scorer's reward, the reference's rule, float32 [B]: score(prompt + response + `<|im_end|>\\n`) clipped to
    [-scale, scale]; in reasoning mode, where the response has an `<answer>`, 0.4 * that + 0.6 * the clipped score
    of the answer content alone. `score_fn` is any callable texts -> float [B], called at most twice, batched."""
    texts = [p + r + END_OF_TURN for p, r in zip(prompts, responses)]
    scores = np.clip(np.asarray(score_fn(texts), np.float32).reshape(-1), -scale, scale)
    if reasoning:
        found = [(i, m.group(1).strip()) for i, m in enumerate(map(ANSWER.search, responses)) if m]
        if found:
            rows = [i for i, _ in found]
            answer_only = [prompts[i] + a + END_OF_TURN for i, a in found]
            answer_scores = np.clip(np.asarray(score_fn(answer_only), np.float32).reshape(-1), -scale, scale)
            scores[rows] = 0.4 * scores[rows] + 0.6 * answer_scores
    return scores.astype(np.float32)


def combine_rewards(parts: Mapping[str, np.ndarray], weights: Mapping[str, float] | None = None) -> np.ndarray:
    """sum_k weights[k] * parts[k], float32 [B]; a part without a weight counts once. A weight naming no part is an
    error (a typo on the command line should not silently drop a reward)."""
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(parts))
    if unknown:
        raise ValueError(f"losses/rewards.py: reward weights {unknown} name no reward; have {sorted(parts)}")
    if not parts:
        raise ValueError("losses/rewards.py: combine_rewards needs at least one reward")
    return np.asarray(sum(weights.get(k, 1.0) * np.asarray(v, np.float32) for k, v in parts.items()), np.float32)

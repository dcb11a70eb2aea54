"""MiniMind-3's rule rewards: host-side Python over strings, float32 out.

- `rule_reward` (GRPO and PPO): a length score, think-block scores, minus a repetition penalty, plus a reward
  model's score clipped to [-3, 3] when one is given.
- `agent_reward` (tool-use rollouts): tag balance, then either the rule scores (no tool call) or the tool-call
  alignment and the ground-truth facts found in the final text; the total is clipped to [-3, 3].

Both follow the reference agent and GRPO trainers' constants.
"""
import json
import re
from typing import Callable, Mapping, Sequence

import numpy as np

WORDS = re.compile(r"\w+|[^\w\s]")
TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)
NUMBER_IN_TEXT = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?![\w.])")
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
THINK_END = "</think>"


def rep_penalty(text: str, n: int = 3, cap: float = 0.5) -> float:
    """min(cap, 2 cap * duplicated / total) over the text's word-or-punctuation n-grams (0 with no n-gram)."""
    toks = WORDS.findall(text.lower())
    grams = [tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)]
    return min(cap, (len(grams) - len(set(grams))) * cap * 2 / len(grams)) if grams else 0.0


def _think_scores(response: str) -> tuple[float, str]:
    """(score of the think block, the answer after it): +1 for a 20..300-character think, else -0.5; +0.25 if
    `</think>` occurs once, else -0.25. No think block: (0, the response)."""
    if THINK_END not in response:
        return 0.0, response
    think, answer = response.split(THINK_END, 1)
    score = (1.0 if 20 <= len(think.strip()) <= 300 else -0.5) + (0.25 if response.count(THINK_END) == 1 else -0.25)
    return score, answer.strip()


def rule_reward(response: str, rm_score: float | None = None) -> float:
    """GRPO/PPO's reward of one response: +-0.5 for a 20..800-character response, the think scores, minus the
    repetition penalty of the answer, plus the reward model's score (clipped to [-3, 3]) when given."""
    think, answer = _think_scores(response)
    reward = (0.5 if 20 <= len(response.strip()) <= 800 else -0.5) + think - rep_penalty(answer)
    return reward + (float(np.clip(rm_score, -3.0, 3.0)) if rm_score is not None else 0.0)


def rule_rewards(responses: Sequence[str], rm_scores: Sequence[float] | None = None) -> np.ndarray:
    scores = [None] * len(responses) if rm_scores is None else rm_scores
    return np.array([rule_reward(r, s) for r, s in zip(responses, scores)], np.float32)


# ---- tool use ------------------------------------------------------------------------------------------------------

def parse_tool_calls(text: str) -> list[dict]:
    """The JSON objects between `<tool_call>` and `</tool_call>` (malformed ones are skipped)."""
    calls = []
    for body in TOOL_CALL.findall(text):
        try:
            call = json.loads(body.strip())
        except ValueError:
            continue
        if isinstance(call, dict):
            calls.append(call)
    return calls


def call_arguments(call: dict) -> dict:
    """A call's arguments as a dict: an object, or a JSON string of one; anything else is {}."""
    raw = call.get("arguments", {})
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raw = {}
    return raw if isinstance(raw, dict) else {}


def facts_found(text: str, gt: Sequence) -> set:
    """The ground-truth items found in `text`: as a case-insensitive substring, or (a number) as any number of the
    text within 1e-6 (thousands separators ignored)."""
    text = str(text)
    nums = [float(x) for x in NUMBER_IN_TEXT.findall(text.replace(",", ""))]
    found = set()
    for g in gt:
        s = str(g).strip()
        if s and s.lower() in text.lower():
            found.add(g)
        elif NUMBER.fullmatch(s.replace(",", "")) and any(abs(float(s.replace(",", "")) - n) < 1e-6 for n in nums):
            found.add(g)
    return found


def _answer_part(turn: str) -> str:
    return turn.split(THINK_END, 1)[-1].strip() if THINK_END in turn else turn.strip()


def agent_reward(turns: Sequence[str], gt: Sequence, tool_names: set[str], unfinished: bool,
                 checks: Mapping[str, Callable[[dict], bool]], rm_score: float | None = None) -> tuple[float, dict]:
    """(reward in [-3, 3], its parts) of one rollout from its generated turns (texts, in order).

    - tags: -0.5 per unmatched `<tool_call>`/`</tool_call>` in each turn's answer part;
    - no tool call: +-0.5 for a 5..800-character final turn, its think scores, the reward model's score when
      given, minus the repetition penalty of its answer;
    - tool calls: +0.5 if the valid calls (a provided tool whose argument check passes) number len(gt) and no
      call is invalid, else -0.5 per call off; +2.5 x the fraction of gt found in the final text (the last turn's
      answer after its last `</tool_call>`; empty if the rollout ran out of turns); -0.5 if unfinished; minus the
      repetition penalty of the final text (or of the answer when it is empty).
    """
    answers = [_answer_part(t) for t in turns]
    response = turns[-1] if turns else ""
    answer = answers[-1] if answers else response.strip()
    calls = [c for a in answers for c in parse_tool_calls(a)]
    parts = {"tags": -0.5 * sum(abs(a.count("<tool_call>") - a.count("</tool_call>")) for a in answers)}
    if not calls:
        think, answer = _think_scores(response) if THINK_END in response else (0.0, answer)
        parts["format"] = (0.5 if 5 <= len(response.strip()) <= 800 else -0.5) + think
        if rm_score is not None:
            parts["rm"] = float(rm_score)
        parts["repetition"] = -rep_penalty(answer)
    else:
        valid = sum(bool(c.get("name") in tool_names and c.get("name") in checks
                         and checks[c["name"]](call_arguments(c))) for c in calls)
        gap = abs(valid - len(gt)) + max(0, len(calls) - valid)
        parts["tools"] = 0.5 if gap == 0 else -0.5 * gap
        final = "" if unfinished else answer.split("</tool_call>")[-1]
        parts["gt"] = 2.5 * len(facts_found(final, gt)) / len(gt) if gt else 0.0
        parts["unfinished"] = -0.5 if unfinished else 0.0
        parts["repetition"] = -rep_penalty(final or answer)
    return float(np.clip(sum(parts.values()), -3.0, 3.0)), parts

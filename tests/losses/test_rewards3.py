"""MiniMind-3's rule and agent rewards against the reference's own values, and the agent reward's rules."""
import json

import pytest

from losses import rewards3
from train.tools import CHECKS


@pytest.fixture
def cases(shared_path):
    return json.loads(shared_path("minimind3/golden/rewards3.json").read_text())


def test_rule_reward_and_repetition_penalty_golden(cases):
    for c in cases["grpo_ppo"]:
        assert rewards3.rule_reward(c["response"], 0.0) == pytest.approx(c["reward_grpo"], abs=1e-6)
        assert rewards3.rule_reward(c["response"], 0.0) == pytest.approx(c["reward_ppo"], abs=1e-6)
        assert rewards3.rep_penalty(c["response"]) == pytest.approx(c["rep_penalty"], abs=1e-9)


def test_agent_reward_golden(cases):
    offered = {"get_current_weather", "calculate_math", "unit_converter"}
    for c in cases["agent"]:
        reward, parts = rewards3.agent_reward(c["turn_outputs"], c["gt"], offered, c["unfinished"], CHECKS)
        assert reward == pytest.approx(c["reward"], abs=1e-6), c["case"]
        assert sum(parts.values()) == pytest.approx(reward, abs=1e-6) or abs(reward) == 3.0


def test_reward_model_score_is_clipped_and_total_is_clipped():
    assert rewards3.rule_reward("x" * 30, 10.0) == pytest.approx(0.5 + 3.0)
    call = '<tool_call>\n{"name": "calculate_math", "arguments": {"expression": "1+1"}}\n</tool_call>'
    reward, _ = rewards3.agent_reward([call, "1+1 = 2"], ["2"], {"calculate_math"}, False, CHECKS)
    assert reward == 3.0                                    # 0.5 + 2.5 for the call and the fact
    reward, _ = rewards3.agent_reward([call, call, call], ["2"], {"calculate_math"}, True, CHECKS)
    assert reward == pytest.approx(-0.5 * 2 - 0.5 - rewards3.rep_penalty(call.split("</think>")[-1].strip()))


def test_facts_are_found_as_text_or_as_numbers():
    assert rewards3.facts_found("it is 1,234.50 miles", ["1234.5", "miles", "km"]) == {"1234.5", "miles"}
    assert rewards3.facts_found("x12", ["12"]) == {"12"}          # a substring counts, as in the reference
    assert rewards3.facts_found("v1.5", ["1.50"]) == set()        # a number glued to a word does not

"""Rewards (host side): the reference's format reward exactly, exact-answer matching, reward-model mixing."""
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from losses import rewards as R

PROMPT = "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n" \
         "<|im_start|>assistant\n"


def test_format_reward_golden(shared_path):
    cases = json.loads(shared_path("golden/rewards_format.json").read_text())
    got = R.format_reward([c["response"] for c in cases])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.array([c["reward"] for c in cases], np.float32))


@given(st.text(alphabet="<>/thinkanswer\n x", max_size=60))
def test_format_reward_range(text):
    (r,) = R.format_reward([text])
    assert 0 <= r <= 1.5 and (r * 4) == int(r * 4)


@pytest.mark.parametrize("response,answer,expected", [
    ("42", "42", 1), (" 42.0 ", "42", 1), ("<think>\n6*7\n</think>\n<answer>\n42\n</answer>", "42", 1),
    ("6 * 7 = 42", "42", 1), ("3 + 4 = 7\nso the answer is 7.", "7", 1), ("1,000", "1000", 1), ("-3", "-3", 1),
    ("41", "42", 0), ("<answer>41</answer> 42", "42", 0), ("no number", "42", 0), ("42", "", 0), ("42", "  ", 0),
    ("<answer>\nParis\n</answer>", "Paris", 1), ("the capital is\n  Paris  ", "Paris", 1), ("paris", "Paris", 0),
    ("42", "forty-two", 0), ("inf", "inf", 1), ("", "0", 0),
])
def test_answer_reward_cases(response, answer, expected):
    got = R.answer_reward([response], [answer])
    assert got.dtype == np.float32 and got[0] == expected


@given(st.integers(-10 ** 6, 10 ** 6), st.sampled_from(["{}", " {} ", "{}.0", "x = {}", "<answer>\n{}\n</answer>"]))
def test_numeric_answers_match_numerically(n, template):
    assert R.answer_reward([template.format(n)], [str(n)])[0] == 1
    assert R.answer_reward([template.format(n + 1)], [str(n)])[0] == 0


def test_answer_reward_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 responses but 1 answers"):
        R.answer_reward(["1", "2"], ["1"])


def test_reward_model_reward_clips_and_mixes_answers():
    calls = []

    def score_fn(texts):          # scores each text by a number it ends with, records what it was asked
        calls.append(list(texts))
        return np.array([float(t.split("#")[-1].split("<")[0]) for t in texts])

    responses = ["plain #5", "<think>\nx\n</think>\n<answer>\n#1\n</answer> #-9", "#2"]
    prompts = [PROMPT] * 3
    plain = R.reward_model_reward(prompts, responses, score_fn)
    np.testing.assert_allclose(plain, [3.0, -3.0, 2.0])                   # clipped to [-3, 3]
    assert calls[0][0] == PROMPT + "plain #5" + R.END_OF_TURN
    mixed = R.reward_model_reward(prompts, responses, score_fn, reasoning=True)
    np.testing.assert_allclose(mixed, [3.0, 0.4 * -3.0 + 0.6 * 1.0, 2.0], rtol=1e-6)
    assert calls[-1] == [PROMPT + "#1" + R.END_OF_TURN]                   # only rows with an <answer>, stripped
    assert mixed.dtype == np.float32


def test_combine_rewards():
    parts = {"format": np.array([1.0, 0.5]), "answer": np.array([1.0, 0.0])}
    np.testing.assert_allclose(R.combine_rewards(parts), [2.0, 0.5])
    np.testing.assert_allclose(R.combine_rewards(parts, {"answer": 2.0}), [3.0, 0.5])
    assert R.combine_rewards(parts).dtype == np.float32
    with pytest.raises(ValueError, match=r"\['anwser'\] name no reward"):
        R.combine_rewards(parts, {"anwser": 1.0})

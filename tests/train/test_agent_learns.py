"""Proof that the agent stage learns tool use, slow: from the MiniMind-3 tiny pipeline's SFT model at width 128
(out/full_sft_128 when it is one, else trained here), an SFT warm-up on generated tool conversations, then agent
RL raises the held-out accuracy of greedy tool rollouts beyond two standard errors (experiments/agent_learn.py on
its default budget). `pytest -m slow` runs it."""
import pytest

from experiments import agent_learn

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    work = tmp_path_factory.mktemp("agent_learn")
    return agent_learn.main(["--work", str(work), "--out", str(work / "agent_learn.json")])


def test_agent_rl_raises_held_out_accuracy(results):
    """The gain beats twice its paired standard error (the same held-out prompts before and after); the warm-up
    taught the call format (the calls it makes run) and left room to learn (it calls the tools on some prompts and
    guesses on others, answers mostly wrong), and after RL the model calls the tools on most prompts."""
    before, after = results["before"], results["after"]
    assert before["success"] > 0.5 and 0.2 < before["well_formed"] < 0.8 and before["correct"] < 0.5, before
    assert results["gain"] > 2 * results["gain_se"] > 0, results
    assert after["well_formed"] > 0.5 and after["success"] > 0.5, after


def test_the_study_times_what_it_reports(results):
    """Both rollout loops generated tokens from the same prompts; every part of an RL step took measurable time."""
    assert results["batched_tokens"] > 0 and results["one_row_tokens"] > 0
    assert min(results[k] for k in ("rollout_s", "tools_s", "update_s")) > 0
    defaults = agent_learn.parser()
    assert results["steps"] == defaults.get_default("steps") and results["eval_prompts"] == defaults.get_default("eval")

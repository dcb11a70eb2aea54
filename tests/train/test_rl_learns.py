"""Proof that the RL stages learn, slow: from a tiny pretrain + full_sft model (the `--stage all` one
when out/full_sft_64 exists, else trained here in ~3 minutes), GRPO and SPO with the exact-answer reward alone
raise the greedy accuracy on held-out verifiable prompts. `pytest -m slow` runs it."""
import pytest

from experiments import rl_learn

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    work = tmp_path_factory.mktemp("learn")
    return rl_learn.main(["--budget", "30000", "--evals", "4", "--work", str(work), "--out", str(work / "learn.json")])


@pytest.mark.parametrize("method", ["grpo", "spo_minimind"])
def test_rl_raises_held_out_accuracy(results, method):
    """The mean of the held-out accuracies measured along the run beats the start by 2 standard errors (of the
    difference of two proportions over 256 prompts): not one lucky evaluation, and not training-set memorisation."""
    evals = [acc for _, acc in results[method]["evals"]]
    start, later = evals[0], sum(evals[1:]) / len(evals[1:])
    se = ((start * (1 - start) + later * (1 - later)) / 256) ** 0.5
    assert later > start + 2 * se, (method, evals)
    assert results[method]["summary"]["tokens"] >= 30000

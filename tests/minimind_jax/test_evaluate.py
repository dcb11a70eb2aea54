"""Multiple-choice evaluation: the scores are the continuations' log-likelihoods, the prediction is their argmax,
and a model tuned towards one answer gets that question right."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from minimind_jax import MiniMindConfig, MiniMindForCausalLM
from minimind_jax.convert import save_weights
from minimind_jax.tokenizer import Tokenizer
from minimind_jax import evaluate


@pytest.fixture(scope="module")
def lm():
    cfg = MiniMindConfig.from_preset("tiny")
    model = MiniMindForCausalLM(cfg)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    rng = np.random.default_rng(0)
    return cfg, model, jax.tree.map(lambda s: rng.normal(0, 0.1, s.shape).astype(np.float32), shapes)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.load()


@pytest.fixture(scope="module")
def rows():
    return evaluate.read_questions(evaluate.SAMPLE)


def direct_logprob(model, params, prompt, continuation) -> float:
    """log p(continuation | prompt) from one unpadded forward pass, summed token by token."""
    logits = jax.jit(model.apply)({"params": params}, jnp.asarray([prompt + continuation])).logits[0]
    logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    return sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(continuation))


@pytest.mark.parametrize("score", ["choice", "letter"])
def test_scores_are_log_likelihoods_and_the_argmax_is_predicted(lm, tok, rows, score):
    _, model, params = lm
    result = evaluate.evaluate(model, params, tok, rows[:3], score=score, batch=8)
    for row, pred in zip(rows[:3], result["predictions"]):
        prompt, continuations = evaluate.prompt_and_continuations(row, tok, score)
        want = [direct_logprob(model, params, prompt, c) for c in continuations]
        np.testing.assert_allclose(pred["logprobs"], want, atol=2e-3, rtol=1e-4)
        assert pred["predicted"] == "ABCD"[int(np.argmax(want))]
    assert result["total"] == 3 and result["correct"] == sum(p["predicted"] == p["answer"]
                                                             for p in result["predictions"])


def test_letter_prompt_lists_the_choices(tok, rows):
    prompt, continuations = evaluate.prompt_and_continuations(rows[0], tok, "letter")
    text = tok.decode(prompt)
    assert "\nA. 5\nB. 6\nC. 7\nD. 8" in text and text.endswith("<|im_start|>assistant\n")
    assert [tok.decode(c) for c in continuations] == ["A", "B", "C", "D"]
    prompt, continuations = evaluate.prompt_and_continuations(rows[0], tok, "choice")
    assert "A. 5" not in tok.decode(prompt) and [tok.decode(c) for c in continuations] == ["5", "6", "7", "8"]


def test_a_model_tuned_to_the_answer_gets_it_right(lm, tok, rows):
    """A few Adam steps raising log p(correct choice | question) turn a wrong prediction into the right one."""
    _, model, params = lm
    row = rows[0]                                    # "What is 3 + 4?": four one-token choices, the answer is C (7)
    prompt, continuations = evaluate.prompt_and_continuations(row, tok, "choice")
    assert [len(c) for c in continuations] == [1, 1, 1, 1]
    before = evaluate.evaluate(model, params, tok, [row], batch=4)["predictions"][0]
    ids = jnp.asarray([prompt + continuations[2]])
    target = slice(len(prompt) - 1, len(prompt) + len(continuations[2]) - 1)

    def loss(p):
        logp = jax.nn.log_softmax(model.apply({"params": p}, ids).logits[0, :-1], axis=-1)
        return -jnp.take_along_axis(logp, ids[0, 1:, None], axis=-1)[target].sum()

    opt = optax.adam(1e-2)
    state = opt.init(params)

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p)
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s

    tuned = params
    for _ in range(30):
        tuned, state = step(tuned, state)
    after = evaluate.evaluate(model, tuned, tok, [row], batch=4)["predictions"][0]
    assert before["predicted"] != "C" and after["predicted"] == "C"
    assert after["logprobs"][2] > before["logprobs"][2] + 5


def test_cli_table_json_and_subjects(lm, tmp_path, capsys):
    cfg, _, params = lm
    run = tmp_path / "full_sft_64"
    save_weights(run / "weights.safetensors", params, cfg, dtype=np.float32)
    (run / "config.json").write_text(cfg.to_json())
    out = tmp_path / "result.json"
    assert evaluate.main(["--weight", str(run), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["total"] == 20 and set(result["subjects"]) == {"geography", "history", "language", "math",
                                                                 "science"}
    assert sum(s["total"] for s in result["subjects"].values()) == 20
    assert printed.splitlines()[0].split() == ["subject", "correct", "total", "accuracy"]
    assert printed.splitlines()[-1].split()[:3] == ["overall", str(result["correct"]), "20"]
    assert evaluate.main(["--weight", str(run), "--score", "letter", "--length_norm"]) == 0


def test_bad_data_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "A": "1", "B": "2", "C": "3", "D": "4", "answer": "C"}\n'
                   '{"question": "q", "A": "1", "B": "2", "C": "3", "answer": "C"}\n')
    assert evaluate.main(["--weight", "none", "--preset", "tiny", "--data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.jsonl:2: no 'D' field" in err
    bad.write_text('{"question": "q", "A": "1", "B": "2", "C": "3", "D": "4", "answer": "E"}\n')
    assert evaluate.main(["--weight", "none", "--preset", "tiny", "--data", str(bad)]) == 2
    assert "is not one of A, B, C, D" in capsys.readouterr().err

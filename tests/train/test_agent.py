"""The agent stage: the tool sandbox, the batched multi-turn rollout against the reference's scripted rollout,
the per-rollout thinking draw, a short real run, and exact resume of a MiniMind-3 RL stage (that it learns:
test_agent_learns.py, slow)."""
import json
import time

import numpy as np
import pytest

from minimind_jax.tokenizer import SAMPLE3_TOKENIZER_DIR, Tokenizer
from tests.train.helpers import train
from train.config import RewardConfig
from train.errors import UsageError
from train.multiturn import Trajectory, agent_rollouts, pack_trajectories, row_bucket
from train.stages.agent import draw_thinking, generation_prompts, score, with_thinking
from train.tools import registry, run_tool

G3 = ["--minimind", "3", "--from_weight", "none"]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.load(SAMPLE3_TOKENIZER_DIR)


def test_arithmetic_is_parsed_never_evaluated():
    tools, _ = registry()
    assert json.loads(run_tool(tools, "calculate_math", {"expression": "(598 + 12) × 3 − 7"})[0]) == {"result": 1823}
    for attack in ('__import__("os").system("true")', "().__class__", "9**9**9", "[1] * 10**9", "lambda: 1"):
        text, ok = run_tool(tools, "calculate_math", {"expression": attack})
        assert not ok and "error" in json.loads(text) and "\n" not in text


def test_sandbox_times_out_cuts_and_reports_failures():
    tools, _ = registry()
    tools.update(slow=lambda a: time.sleep(10), spin=lambda a: [None for _ in iter(int, 1)],
                 big=lambda a: {"x": "y" * 10_000}, boom=lambda a: 1 / 0)
    for name in ("slow", "spin"):
        t0 = time.perf_counter()
        text, ok = run_tool(tools, name, {}, timeout=0.2)
        assert not ok and "timed out" in text and time.perf_counter() - t0 < 2
    assert len(run_tool(tools, "big", {})[0]) == 2048
    assert run_tool(tools, "boom", {}) == ('{"error": "boom: ZeroDivisionError: division by zero"}', False)
    assert not run_tool(tools, "nope", {})[1]


def test_user_tools_are_pluggable(tmp_path):
    (tmp_path / "mytools.py").write_text("TOOLS = {'echo': lambda a: {'said': a.get('text')}}\n")
    tools, checks = registry(f"{tmp_path / 'mytools.py'}:TOOLS")
    assert run_tool(tools, "echo", {"text": "hi"}) == ('{"said": "hi"}', True)
    assert checks["echo"]({}) and "calculate_math" in tools


def test_scripted_rollout_matches_the_reference(tok, shared_path):
    """The reference's rollout with a scripted policy: the same prompt, turns, observation tokens and masks —
    except that each turn's eos is a trained target here (the reference drops it and re-tokenizes it as an
    observation) and the rollout ends with the eos of its last turn."""
    ref = json.loads(shared_path("minimind3/golden/data_minimind3.json").read_text())["agent_rollout"]
    prompt = tok.encode(tok.apply_chat_template(ref["messages_in"], add_generation_prompt=True, tools=ref["tools"],
                                                open_thinking=False))
    assert prompt == ref["prompt_ids"]
    script = iter(ref["scripted_turns"])
    generate = lambda contexts: [tok.encode(next(script)) + [tok.eos_id] for _ in contexts]
    (traj,), _ = agent_rollouts(generate, tok, [prompt], [False], registry()[0], max_turns=3, max_total_len=2500)
    eos_at = ref["response_ids"].index(tok.eos_id)
    expected_mask = ref["response_mask"][:eos_at] + [1] + ref["response_mask"][eos_at + 1:] + [1]
    assert traj.tokens == ref["response_ids"] + [tok.eos_id]
    assert traj.mask == expected_mask
    assert traj.turns == ref["turn_outputs"] and not traj.unfinished and (traj.calls, traj.errors) == (1, 0)
    assert tok.decode(traj.context) == ref["final_context"] + "<|im_end|>"


def test_rollouts_advance_together_and_pack_like_the_reference(tok, golden_agent=None):
    """Three rollouts in one batch: each sampler call gets every unfinished rollout; one stops at once, one calls a
    tool twice and runs out of turns, one fails a call; packing keeps the last max_total_len tokens."""
    call = '<tool_call>\n{"name": "calculate_math", "arguments": {"expression": "%s"}}\n</tool_call>'
    scripts = [["no tools"], [call % "1+1", call % "2+2"], [call % "os.system()", "sorry"]]
    batches = []

    def generate(contexts):
        batches.append(len(contexts))
        return [tok.encode(s.pop(0)) + [tok.eos_id] for s in [x for x in scripts if x][:len(contexts)]]
    prompts = [[1, 5, 6], [1, 7], [1, 8, 9, 10]]
    trajs, _ = agent_rollouts(generate, tok, prompts, [False] * 3, registry()[0], max_turns=2, max_total_len=2500)
    assert batches == [3, 2]
    assert [len(t.turns) for t in trajs] == [1, 2, 2]
    assert [t.unfinished for t in trajs] == [False, True, False]
    assert [t.errors for t in trajs] == [0, 0, 1]
    packed = pack_trajectories(trajs, 20, tok.pad_id)
    assert packed["sequences"].shape == (3, 20)
    for t, row, m, plen in zip(trajs, packed["sequences"], packed["response_mask"], packed["prompt_lens"]):
        kept = (t.prompt + t.tokens)[-20:]
        np.testing.assert_array_equal(row[:len(kept)], kept)
        assert m[plen] == 1 and not m[:plen].any()


def test_thinking_is_drawn_per_rollout_from_the_row_alone(tok, tmp_path):
    """Each of a prompt's G rollouts draws its own think block (as upstream draws once per rollout), the same
    draws whatever else is in the batch; swapping the generation prompt gives the data set's other variant."""
    import jax
    from minimind_jax.data import SAMPLE3_DIR, AgentDataset3
    key, G = jax.random.PRNGKey(3), 8
    both = draw_thinking(key, [4, 9], G, 0.5).reshape(2, G)
    np.testing.assert_array_equal(both[1], draw_thinking(key, [9], G, 0.5))
    assert 0 < both.sum() < both.size and len({tuple(r) for r in both}) == 2
    assert not draw_thinking(key, [4, 9], G, 0.0).any() and draw_thinking(key, [4, 9], G, 1.0).all()
    assert (draw_thinking(jax.random.PRNGKey(4), [4, 9], G, 0.5).reshape(2, G) != both).any()

    gen = generation_prompts(tok)
    closed, opened = (AgentDataset3(SAMPLE3_DIR / "agent.jsonl", tok, 512, thinking_ratio=r, cache_dir=tmp_path)
                      .batch([0]) for r in (0.0, 1.0))
    prompt = lambda b: list(b["prompt_ids"][0][b["prompt_mask"][0] == 1])
    assert with_thinking(prompt(closed), False, True, gen) == prompt(opened)
    assert with_thinking(prompt(opened), True, False, gen) == prompt(closed)
    assert with_thinking(prompt(closed), False, False, gen) == prompt(closed)


def test_rollout_rows_pad_little_to_few_compiled_counts():
    """A turn's contexts are padded to row_bucket(n) rows: never fewer than n, fewer than half as many again
    (a power of two pads 35 to 64, 33 to 64), and at most four counts in each octave, so few programs compile."""
    for n in range(1, 1025):
        assert n <= row_bucket(n) < 1.5 * n, n
    for k in range(2, 10):
        assert len({row_bucket(n) for n in range(2 ** k + 1, 2 ** (k + 1) + 1)}) <= 4, k


def test_window_logps_are_the_full_forward_where_the_loss_reads():
    """The loss's log-probs, computed only in each row's response window, equal the full forward's there, and
    every generated position of every row lies in its window."""
    import jax
    from minimind_jax import MiniMindConfig, MiniMindForCausalLM
    from losses import token_logprobs
    from train.multiturn import response_windows, window, window_logps
    model = MiniMindForCausalLM(MiniMindConfig.from_preset("tiny", generation=3))
    T, lens, prompt_lens = 48, np.array([30, 48, 41]), np.array([12, 40, 20])
    seq = np.array(jax.random.randint(jax.random.PRNGKey(0), (3, T), 3, 6400), np.int32)
    amask = (np.arange(T) < lens[:, None]).astype(np.int32)
    seq[amask == 0] = 0
    params = model.init(jax.random.PRNGKey(1), seq[:, :8])["params"]
    starts, R = response_windows(prompt_lens, T, width_multiple=8)
    assert R < T - 1 and np.all(starts <= prompt_lens - 1) and np.all(starts + R >= lens - 1)
    full = token_logprobs(model.apply({"params": params}, seq[:, :-1], amask[:, :-1]).logits, seq[:, 1:])
    logps, aux = window_logps(model, params, seq, amask, starts, R)
    assert logps.shape == (3, R) and float(aux) == 0.0
    np.testing.assert_allclose(logps, window(full, starts, R), rtol=1e-5, atol=1e-5)


def test_agent_stage_runs_two_steps(tmp_path):
    """Two steps with a --reward_fn, which sees each rollout's prompt and turns as text and its row's gt list,
    and whose score is added as the part 'custom'."""
    user = tmp_path / "user_reward.py"
    user.write_text("def gt_count(prompts, responses, answers):\n"
                    "    assert all(isinstance(x, str) for x in prompts + responses)\n"
                    "    assert all(isinstance(a, list) and a for a in answers)\n"
                    "    return [float(len(a)) for a in answers]\n")
    records = train(tmp_path, "agent", *G3, "--max_steps", "2", "--batch_size", "2", "--num_generations", "2",
                    "--max_gen_len", "8", "--max_seq_len", "512", "--max_total_len", "600",
                    "--reward_fn", f"{user}:gt_count")
    assert len(records) == 2
    for r in records:
        for key in ("loss", "reward", "tool_calls", "tool_error_rate", "turns", "rollout_s", "tools_s", "update_s"):
            assert np.isfinite(r[key])
        assert r["reward_custom"] >= 1 and r["reward"] >= r["reward_custom"] - 3     # upstream's part is >= -3
    assert (tmp_path / "agent_64" / "weights.safetensors").exists()


def test_rule_reward_off_leaves_the_user_function_alone():
    """--rule_reward 0: a rollout's reward is exactly the --reward_fn's score (a right call and answer, and a
    direct reply, score 1 and 0 by the user's rule whatever upstream's reward gives them); without a --reward_fn
    it is refused, since nothing would score the rollouts."""
    call = '<tool_call>{"name": "calculate_math", "arguments": {"expression": "2 + 3"}}</tool_call>'
    trajs = [Trajectory([], False, turns=[call, "The result is 5."], calls=1),
             Trajectory([], False, turns=["The answer is 5."])]
    user = lambda prompts, responses, answers: [float("</tool_call>" in r) for r in responses]
    checks = registry()[1]
    with_rule, parts = score(trajs, [["5"]], [{"calculate_math"}], checks, 2, user, ["q", "q"])
    alone, only = score(trajs, [["5"]], [{"calculate_math"}], checks, 2, user, ["q", "q"], rule=False)
    np.testing.assert_array_equal(alone, [1.0, 0.0])
    assert set(only) == {"custom"} and {"custom", "gt", "format"} <= set(parts)
    np.testing.assert_array_equal(with_rule, alone + [3.0, 0.5 + parts["repetition"][1]])
    with pytest.raises(UsageError, match="--rule_reward 0"):
        RewardConfig(rule_reward=False)


def test_rule_reward_off_at_minimind3_grpo_leaves_the_user_function_alone(tmp_path):
    """The GRPO/PPO scorer at MiniMind-3 drops its rule part under --rule_reward 0 and keeps the user's; at
    --minimind 2, whose rule parts have flags of their own, the flag is refused."""
    from train.args import parser
    from train.rollout import make_scorer
    from train.run import config_of
    user = tmp_path / "user_reward.py"
    user.write_text("def length(prompts, responses, answers):\n    return [float(len(r)) for r in responses]\n")
    flags = ["--stage", "grpo", "--reward_fn", f"{user}:length"]
    _, config = config_of(parser().parse_args([*flags, "--minimind", "3", "--rule_reward", "0"]))
    total, parts = make_scorer(config, None)(["q", "q"], ["<think>a</think>answer", "ok"], ["", ""])
    assert set(parts) == {"custom"}
    np.testing.assert_array_equal(total, [22.0, 2.0])        # len() of each response
    _, config = config_of(parser().parse_args([*flags, "--minimind", "3"]))
    assert set(make_scorer(config, None)(["q"], ["ok"], [""])[1]) == {"rule", "custom"}
    with pytest.raises(UsageError, match="--minimind 2"):
        config_of(parser().parse_args([*flags, "--rule_reward", "0"]))


@pytest.mark.parametrize("stage,flags", [
    ("ppo", ["--batch_size", "4", "--mini_batch_size", "2", "--learning_rate", "1e-4",
             "--critic_learning_rate", "1e-4"]),
    ("grpo", ["--batch_size", "2", "--num_generations", "2", "--loss_type", "grpo", "--learning_rate", "1e-4"]),
])
def test_minimind3_rl_resumes_exactly(tmp_path, stage, flags):
    """Three steps in one go equal two steps, a stop, and a resumed third (weights, optimizer and the stage's
    state all come back from the checkpoint)."""
    common = [*G3, "--max_gen_len", "8", "--max_seq_len", "64", "--save_interval", "1", *flags]
    whole = train(tmp_path / "whole", stage, *common, "--max_steps", "3")
    train(tmp_path / "parts", stage, *common, "--max_steps", "2")
    resumed = train(tmp_path / "parts", stage, *common, "--max_steps", "3", "--from_resume", "1")
    assert resumed[-1]["step"] == 3
    assert resumed[-1]["loss"] == pytest.approx(whole[-1]["loss"], rel=1e-5, abs=1e-7)
    assert resumed[-1]["reward"] == whole[-1]["reward"]



def test_the_agent_study_data_never_shows_a_prompts_answer_in_the_warm_up(tmp_path):
    """data/build_agent3.py: the same seed writes the same bytes; no arithmetic agent prompt's expression is
    called in a warm-up row, and its gt is what the sandboxed calculator returns for it; --direct turns that
    fraction of the SFT rows into answers without a call and leaves the other files as they were."""
    import importlib.util
    import re
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("build_agent3", Path(__file__).resolve().parents[2] / "data" /
                                                  "build_agent3.py")
    build_agent3 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_agent3)
    sizes = {"agent": 200, "agent_sft": 100, "agent_copy": 300}
    a, b = build_agent3.write(tmp_path / "a", 3, sizes), build_agent3.write(tmp_path / "b", 3, sizes)
    assert all(a[k].read_bytes() == b[k].read_bytes() for k in a)
    rows = {k: [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines()] for k, p in a.items()}
    assert {k: len(v) for k, v in rows.items()} == sizes
    called = {c["arguments"].get("expression") for k in ("agent_sft", "agent_copy") for r in rows[k]
              for m in r["conversations"] if m.get("tool_calls") for c in json.loads(m["tool_calls"])}
    tools, _ = registry(None)
    math = 0
    for row in rows["agent"]:
        found = re.search(r"\(?\d( [-+*] \(?\d\)?)+", row["conversations"][1]["content"])
        if found:
            math += 1
            assert found.group() not in called, found.group()
            result, ok = run_tool(tools, "calculate_math", {"expression": found.group()})
            assert ok and row["gt"][0] in result, (found.group(), result, row["gt"])
    assert math > 100
    # --direct: that fraction of the SFT rows answer at once (no call), the other files unchanged.
    d = build_agent3.write(tmp_path / "d", 3, sizes, direct=0.5)
    assert all(d[k].read_bytes() == a[k].read_bytes() for k in ("agent", "agent_copy"))
    sft = [json.loads(x)["conversations"] for x in d["agent_sft"].read_text(encoding="utf-8").splitlines()]
    direct = [c for c in sft if not any(m.get("tool_calls") for m in c)]
    assert 30 <= len(direct) <= 70
    assert all([m["role"] for m in c] == ["system", "user", "assistant"]
               and c[2]["content"].startswith(("The result", "结果")) for c in direct)

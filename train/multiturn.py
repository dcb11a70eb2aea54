"""Multi-turn tool rollouts (the agent stage): every rollout advances one turn per batched sampler call, the tool
calls of a turn run on the host between turns, and their results come back as observation tokens appended by
concatenation (never by re-rendering and re-tokenising the whole conversation, whose token splits may differ).
"""
import dataclasses
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import losses
from minimind_jax.model import MiniMindModel
from train.rollout import sample


@dataclasses.dataclass
class Trajectory:
    """One tool-using rollout, built by concatenation: the prompt, then per turn the generated tokens (through the
    eos that ended the turn: a trained target) and, after a turn with tool calls, the observation tokens (the tool
    turn and the next generation prompt, tokenized on their own, never trained)."""
    prompt: list[int]
    open_thinking: bool
    tokens: list[int] = dataclasses.field(default_factory=list)    # everything after the prompt
    mask: list[int] = dataclasses.field(default_factory=list)      # 1: generated, 0: observation
    turns: list[str] = dataclasses.field(default_factory=list)     # each turn's generated text (eos dropped)
    calls: int = 0                  # tool calls parsed
    errors: int = 0                 # calls that failed (unknown tool, bad arguments, exception, timeout)
    unfinished: bool = False        # the last turn still called tools, or the rollout ran out of room
    done: bool = False

    @property
    def context(self) -> list[int]:
        return self.prompt + self.tokens


def observation_ids(tokenizer, results: list[str], open_thinking: bool, ended: bool) -> list[int]:
    """The tokens after a turn's tool calls: the turn's `<|im_end|>` if the model did not emit it, the newline that
    ends the assistant turn, the tool results as one user turn of `<tool_response>` blocks, and the next
    generation prompt."""
    from minimind_jax.template3 import TURN_END, render
    text = render([{"role": "tool", "content": r} for r in results], add_generation_prompt=True,
                  open_thinking=open_thinking)
    return tokenizer.encode(("" if ended else TURN_END.rstrip("\n")) + "\n" + text)


def agent_rollouts(generate_turn, tokenizer, prompts: list[list[int]], open_thinking: list[bool], tools: dict, *,
                   max_turns: int, max_total_len: int, timeout: float = 1.0) -> tuple[list[Trajectory], dict]:
    """Every rollout advances one turn per `generate_turn(contexts) -> [generated ids]` call (one batched
    sampler call for all the rollouts still running); tool calls run on the host between turns.

    Returns the trajectories and {'generate_s', 'tools_s'}."""
    from losses.rewards3 import call_arguments, parse_tool_calls
    from train.tools import run_tool
    eos, pad = tokenizer.eos_id, tokenizer.pad_id
    trajs = [Trajectory(list(p), bool(t)) for p, t in zip(prompts, open_thinking)]
    times = {"generate_s": 0.0, "tools_s": 0.0}
    for turn in range(max_turns):
        active = [t for t in trajs if not t.done]
        if not active:
            break
        t0 = time.perf_counter()
        outputs = generate_turn([t.context for t in active])
        t1 = time.perf_counter()
        for traj, out in zip(active, outputs):
            out = [int(x) for x in out]
            ended = bool(out) and out[-1] == eos
            traj.tokens += out
            traj.mask += [1] * len(out)
            text = tokenizer.decode([x for x in out if x not in (eos, pad)])
            traj.turns.append(text)
            calls = parse_tool_calls(text)
            if not calls:
                traj.done = True
                continue
            traj.calls += len(calls)
            if turn == max_turns - 1:
                traj.unfinished = traj.done = True
                continue
            results = []
            for call in calls:
                result, ok = run_tool(tools, str(call.get("name", "")), call_arguments(call), timeout)
                results.append(result)
                traj.errors += not ok
            obs = observation_ids(tokenizer, results, traj.open_thinking, ended)
            traj.tokens += obs
            traj.mask += [0] * len(obs)
            if len(traj.context) >= max_total_len:       # no room for another turn
                traj.unfinished = traj.done = True
        times["generate_s"] += t1 - t0
        times["tools_s"] += time.perf_counter() - t1
    return trajs, times


def bucket(n: int, step: int) -> int:
    """n rounded up to a multiple of `step`: shapes from a few buckets compile a few programs."""
    return -(-n // step) * step


def row_bucket(n: int) -> int:
    """n rounded up to a multiple of a quarter of the power of two above it (35 -> 48, 64 -> 64, 5 -> 6): at most
    four row counts per octave to compile, and a later turn, whose long contexts are all prefilled, pads few
    rows (a power of two pads 35 to 64, nearly doubling that prefill)."""
    step = max(1, (1 << (n - 1).bit_length()) // 4)
    return bucket(n, step)


def runs_of_equal_rows(ids: np.ndarray) -> int:
    """The largest g such that ids [N, W] is N / g runs of g equal rows (1 when none): the first turn's contexts
    are each prompt's G rollouts, whose shared prompt is then prefilled once."""
    n = len(ids)
    for g in range(n, 1, -1):
        if n % g == 0 and (ids.reshape(n // g, g, -1) == ids[::g, None]).all():
            return g
    return 1


def turn_sampler(run, params, key, width_multiple: int = 64, temperature: float | None = None):
    """generate_turn(contexts) for `agent_rollouts`: the contexts left-padded to a bucketed width (and to
    `row_bucket` rows, filled with copies of the first) and sampled in one jitted call; each row's tokens through
    its eos. Buckets keep the compiled programs few as rollouts finish and contexts grow; runs of equal contexts
    (a prompt's G first turns) are prefilled once."""
    tok, calls = run.tokenizer, [0]

    def generate_turn(contexts: list[list[int]]) -> list[list[int]]:
        n, W = len(contexts), bucket(max(map(len, contexts)), width_multiple)
        rows = contexts + [contexts[0]] * (row_bucket(n) - n)
        ids = np.full((len(rows), W), tok.pad_id, np.int32)
        mask = np.zeros((len(rows), W), np.int32)
        for i, c in enumerate(rows):
            ids[i, W - len(c):], mask[i, W - len(c):] = c, 1
        seqs, cmask = sample(run, params, ids, mask, jax.random.fold_in(key, calls[0]), temperature,
                             prompt_groups=runs_of_equal_rows(ids))
        calls[0] += 1
        seqs, cmask = np.asarray(seqs)[:n, W:], np.asarray(cmask)[:n]
        return [list(s[:m.sum()]) for s, m in zip(seqs, cmask)]
    return generate_turn


def pack_trajectories(trajs: list[Trajectory], max_total_len: int, pad_id: int, width: int | None = None) -> dict:
    """Trajectories -> right-padded training rows: `sequences` int32 [N, T] (prompt + response, the last
    max_total_len tokens of each), `response_mask` int32 [N, T] (1 on generated tokens), `attention_mask`
    (real tokens), `prompt_lens` int32 [N] (the first generated position). T is `width` when given (>= the
    longest row), else the longest row."""
    ids = [(t.prompt + t.tokens)[-max_total_len:] for t in trajs]
    masks = [([0] * len(t.prompt) + t.mask)[-max_total_len:] for t in trajs]
    T = max(map(len, ids)) if width is None else width
    out = {"sequences": np.full((len(ids), T), pad_id, np.int32), "response_mask": np.zeros((len(ids), T), np.int32),
           "attention_mask": np.zeros((len(ids), T), np.int32)}
    for i, (x, m) in enumerate(zip(ids, masks)):
        out["sequences"][i, :len(x)], out["response_mask"][i, :len(x)], out["attention_mask"][i, :len(x)] = x, m, 1
    out["prompt_lens"] = np.array([next((j for j, v in enumerate(m) if v), len(m)) for m in masks], np.int32)
    return out


def response_windows(prompt_lens, T: int, width_multiple: int = 64) -> tuple[np.ndarray, int]:
    """(starts int32 [N], R) for packed rows of T tokens: each row's R prediction positions (position t predicts
    token t + 1) from the one before its first generated token; R is the longest span from there to the row's end,
    bucketed, so every generated token of every row lies in its window (starts are moved back where a window
    would pass the end)."""
    starts = np.maximum(np.asarray(prompt_lens, np.int64) - 1, 0)
    R = min(bucket(int((T - 1 - starts).max()), width_multiple), T - 1)
    return np.minimum(starts, T - 1 - R).astype(np.int32), R


def window(x, starts, R: int):
    """x [N, S, ...] -> [N, R, ...]: row i's positions starts[i] .. starts[i] + R - 1."""
    idx = jnp.asarray(starts)[:, None] + jnp.arange(R)                                  # [N, R]
    return jnp.take_along_axis(jnp.asarray(x), idx.reshape(*idx.shape, *[1] * (jnp.ndim(x) - 2)), axis=1)


def window_logps(model, params, sequences, attention_mask, starts, R: int, *, train: bool = False, rngs=None):
    """(log-prob of each next token in the rows' windows [N, R], the MoE aux loss). The decoder runs over all
    T - 1 positions; the output projection and softmax, most of a small model's cost at a 6,400-token
    vocabulary, only over the R positions the loss reads."""
    backbone = MiniMindModel(model.cfg, model.policy)
    variables = {"params": params["model"]}
    hidden, aux, _ = backbone.apply(variables, sequences[:, :-1], attention_mask[:, :-1], train, None,
                                    rngs=rngs)                                           # [N, T-1, H]
    logits = backbone.apply(variables, window(hidden, starts, R), method=MiniMindModel.lm_head)   # [N, R, V]
    return losses.token_logprobs(logits, window(sequences[:, 1:], starts, R)), aux


@partial(jax.jit, static_argnames=("model", "R"))
def reference_logps(model, params, sequences, attention_mask, starts, R: int):
    """`window_logps` of the frozen reference, [N, R]."""
    return window_logps(model, params, sequences, attention_mask, starts, R)[0]

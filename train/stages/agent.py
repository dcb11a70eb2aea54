"""Agent RL (MiniMind-3): tool-using rollouts over several turns, group-normalised advantages, CISPO or GRPO-clip.

Each prompt (a question whose answer needs the tools in its system message) is rolled out G times, each rollout
drawing its own open or closed think block (as upstream does, once per rollout). All rollouts
advance one turn per batched sampler call; the tool calls of a turn run on the host, sandboxed (train/tools.py),
and their results are appended as observation tokens before the next turn. The loss trains every generated token
(each turn through its eos) and none of the prompt or observation tokens. The reward (losses/rewards3.py:
agent_reward) scores the tool calls against the row's `gt` facts and the final answer. A `--reward_fn` adds its
score, or with `--rule_reward 0` is the whole reward; it is called as fn(prompts, responses, answers), each
rollout's generated turns joined by newlines as its response and the row's `gt` list as its answer.

One update per rollout, from the weights that sampled it: the ratio is 1 in value (no old-policy copy), so the
update is the policy gradient weighted by the group advantages, plus beta times k3 to the frozen reference.

Tiny runs (`--preset tiny`) default to short turns and a few steps so that the stage finishes in minutes on CPU.
"""
import functools
import time

import jax
import numpy as np

import losses
from losses.rewards3 import agent_reward
from minimind_jax.template3 import ASSISTANT_START, EMPTY_THINK, OPEN_THINK
from train import rng
from train.multiturn import (agent_rollouts, bucket, pack_trajectories, reference_logps, response_windows,
                             turn_sampler, window, window_logps)
from train.rollout import load_reward_fn
from train.stage import Stage, rl_schedule
from train.stages.common import init_with_reference
from train.tools import registry

tiny = lambda tiny_value, value: (lambda a: tiny_value if a.preset == "tiny" else value)
THINKING_RATIO = 0.1            # the reference's chance of an open think block, per rollout


@functools.lru_cache(maxsize=4)
def _tools(spec: str | None):
    return registry(spec)


_user_reward = functools.lru_cache(maxsize=4)(load_reward_fn)      # imported once per run, not per step


def tool_names(tools) -> set[str]:
    """The names of the tools a prompt offers (its system message's schemas)."""
    return {(t.get("function") or t).get("name") for t in tools or [] if isinstance(t, dict)}


@functools.lru_cache(maxsize=4)
def generation_prompts(tokenizer) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The ids the agent data set ends each prompt with: the generation prompt, thinking closed and open."""
    return tuple(tuple(tokenizer.encode(ASSISTANT_START + t)) for t in (EMPTY_THINK, OPEN_THINK))


def draw_thinking(key, rows, G: int, ratio: float) -> np.ndarray:
    """bool [B * G]: whether each rollout opens its think block. Upstream draws once per rollout, so the G
    rollouts of a prompt draw independently; each row's G draws depend on (key, row) alone."""
    u = jax.vmap(lambda r: jax.random.uniform(jax.random.fold_in(key, r), (G,)))(np.asarray(rows, np.uint32))
    return np.asarray(u < ratio).reshape(-1)


def with_thinking(prompt: list[int], drawn: bool, think: bool, generation) -> list[int]:
    """The prompt with the generation prompt the data set drew (`drawn`) replaced by the rollout's own."""
    return prompt[:len(prompt) - len(generation[int(drawn)])] + list(generation[int(think)])


def score(trajs, gt, offered, checks, G: int, user=None, prompts=None,
          rule: bool = True) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(rewards float32 [N], {part: float32 [N]}) of N = B * G trajectories, rollout i from prompt i // G: the rule
    reward's parts unless `rule` is off, and `user`'s (a --reward_fn, given the N prompt texts) as part 'custom'."""
    scored = [agent_reward(t.turns, gt[i // G], offered[i // G], t.unfinished, checks) if rule else (0.0, {})
              for i, t in enumerate(trajs)]
    names = sorted({k for _, parts in scored for k in parts})
    parts = {k: np.array([p.get(k, 0.0) for _, p in scored], np.float32) for k in names}
    rewards = np.array([r for r, _ in scored], np.float32)
    if user is not None:
        answers = [list(gt[i // G]) for i in range(len(trajs))]
        parts["custom"] = np.asarray(user(prompts, ["\n".join(t.turns) for t in trajs], answers), np.float32)
        rewards = rewards + parts["custom"]
    return rewards, parts


def prepare(run, state, frozen, arrays, host, step):
    c, r3 = run.config, run.config.rl3
    G, tok = c.rollout.num_generations, run.tokenizer
    A, B, P = arrays["prompt_ids"].shape
    ids, mask = arrays["prompt_ids"].reshape(A * B, P), arrays["prompt_mask"].reshape(A * B, P)
    sample_key, thinking_key = jax.random.split(rng.draw(c.seed, "rollout", step))
    ratio = THINKING_RATIO if c.data.thinking_ratio is None else c.data.thinking_ratio
    thinking = draw_thinking(thinking_key, arrays["index"].reshape(-1), G, ratio)           # [N], N = A*B*G
    drawn = np.repeat(arrays["open_thinking"].reshape(-1), G)
    generation = generation_prompts(tok)
    prompts = [with_thinking(list(row[m == 1]), d, t, generation)
               for row, m, d, t in zip(np.repeat(ids, G, 0), np.repeat(mask, G, 0), drawn, thinking)]
    tools, checks = _tools(r3.tools)

    sampler = turn_sampler(run, state.params, sample_key)
    trajs, times = agent_rollouts(sampler, tok, prompts, thinking, tools, max_turns=r3.max_turns,
                                  max_total_len=r3.max_total_len, timeout=r3.tool_timeout)
    user = _user_reward(c.reward.reward_fn) if c.reward.reward_fn else None
    rewards, parts = score(trajs, host["gt"], [tool_names(t) for t in host["tools"]], checks, G, user,
                           [tok.decode(p) for p in prompts] if user else None, rule=c.reward.rule_reward)

    t0 = time.perf_counter()
    longest = max(min(len(t.context), r3.max_total_len) for t in trajs)
    packed = pack_trajectories(trajs, r3.max_total_len, tok.pad_id, width=min(bucket(longest, 64), r3.max_total_len))
    seq, amask = packed["sequences"], packed["attention_mask"]                             # [N, T]
    loss_mask = losses.spans_through_first_eos(seq[:, 1:], packed["response_mask"][:, 1:], tok.eos_id)   # [N, T-1]
    starts, R = response_windows(packed["prompt_lens"], seq.shape[1])
    batch = {"sequences": seq, "attention_mask": amask, "starts": starts,
             "loss_mask": np.asarray(window(loss_mask, starts, R)),                          # [N, R]
             "ref_logps": np.asarray(reference_logps(run.model, frozen["ref"], seq, amask, starts, R)),
             "advantages": np.asarray(losses.group_advantages(rewards, G)), "rewards": rewards}
    batch = jax.tree.map(lambda x: np.asarray(x).reshape(A, B * G, *np.shape(x)[1:]), batch)

    calls = np.array([t.calls for t in trajs])
    trained = np.asarray(loss_mask).sum(-1)
    info = {"reward": float(rewards.mean()), **{f"reward_{k}": float(v.mean()) for k, v in parts.items()},
            "tool_calls": float(calls.mean()),
            "tool_error_rate": float(sum(t.errors for t in trajs) / max(calls.sum(), 1)),
            "turns": float(np.mean([len(t.turns) for t in trajs])),
            "unfinished": float(np.mean([t.unfinished for t in trajs])),
            "response_len": float(trained.mean()), "completion_tokens": int(trained.sum()),
            "rollout_s": times["generate_s"], "tools_s": times["tools_s"], "logps_s": time.perf_counter() - t0}
    return batch, info, None


def make_loss(run):
    model, r3, beta = run.model, run.config.rl3, run.config.objective.beta

    def loss_fn(params, batch, key, frozen, extra):
        R = batch["loss_mask"].shape[-1]
        logps, aux = window_logps(model, params, batch["sequences"], batch["attention_mask"], batch["starts"], R,
                                  train=True, rngs={"dropout": key})                     # [N, R]
        pg, metrics = losses.group_policy_loss(logps, None, batch["ref_logps"], batch["advantages"],
                                               batch["loss_mask"], beta=beta, loss_type=r3.loss_type,
                                               epsilon=r3.epsilon, epsilon_high=r3.epsilon_high,
                                               skip_empty_rows=True, return_metrics=True)
        loss = pg + aux
        return loss, {"loss": loss, "policy_loss": pg, "aux_loss": aux, **metrics}

    return loss_fn


STAGE = Stage(
    name="agent",
    generations=(3,),
    defaults=dict(learning_rate=tiny(1e-5, 3e-7), batch_size=tiny(4, 2), accumulation_steps=1,
                  max_seq_len=tiny(512, 1024), max_gen_len=tiny(48, 768), epochs=1, beta=0.1,
                  max_steps=tiny(4, None), thinking_ratio=tiny(0.0, THINKING_RATIO), from_weight="full_sft",
                  save_weight="agent", num_generations=4, rollout_top_k=50, rollout_top_p=0.85),
    data_file="agent.jsonl",
    dataset="agent",
    make_loss=make_loss,
    init=init_with_reference,
    schedule=rl_schedule,
    prepare=prepare,
    single_process="its turn loop runs on the host, per process; the processes' sampler calls are not yet kept in "
                   "lockstep (rollouts finish after different numbers of turns)",
)

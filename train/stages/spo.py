"""SPO (the reference's form): one completion per prompt, a Beta value tracker as the baseline.

A = clip(r - (b * 6 - 3), -5, 5) with b = alpha / (alpha + beta) read before the update; per-token loss
`-logp * A + beta * KL`. The tracker needs only the rewards and the sampling policy's log-probs, so the sequential
per-micro-batch updates run once, at rollout time: they give the advantages and the tracker after them, which the
engine puts in the (checkpointed) state the step runs on — the loss never reads it. `--spo_mode paper` is the paper's algorithm,
train/stages/spo_paper.py.
"""
import jax

import losses
from train.rollout import rollout_batch
from train.stage import Stage, rl_schedule
from train.stages.common import init_with_reference, kl_regularized_loss, rl_start_weight


@jax.jit
def tracker_scan(tracker, rewards, logps, completion_mask):
    """Micro-batch by micro-batch ([A, B] rewards): advantages under the baseline before each update, and the
    tracker after all of them."""
    def visit(tracker, xs):
        r, lp, m = xs
        baseline = losses.spo_baseline(tracker)
        advantages = losses.spo_advantages(r, baseline)
        tracker, rho = losses.spo_tracker_update(tracker, r, lp, m)
        return tracker, (advantages, baseline, rho)
    return jax.lax.scan(visit, tracker, (rewards, logps, completion_mask))


def prepare(run, state, frozen, arrays, host, step):
    batch, info = rollout_batch(run, state.params, frozen, arrays, host, step, old_params=state.params)
    tracker, (advantages, baseline, rho) = tracker_scan(state.extra["tracker"], batch["rewards"],
                                                        batch["old_logps"], batch["completion_mask"])
    batch["advantages"] = advantages
    info.update(baseline=float(baseline[-1]), rho=float(rho[-1]))
    return batch, info, {**state.extra, "tracker": tracker}


STAGE = Stage(
    name="spo",
    generations=(2,),          # MiniMind-3 has its own RL objectives
    defaults=dict(learning_rate=1e-7, batch_size=2, accumulation_steps=4, max_seq_len=66, max_gen_len=1536,
                  epochs=1, beta=0.02, from_weight=rl_start_weight, save_weight="spo"),
    data_file="rlaif.jsonl",
    dataset="rlaif",
    make_loss=lambda run: kl_regularized_loss(run, losses.spo_loss),
    init=init_with_reference,
    init_extra=lambda run, params, frozen, dataset: {"tracker": losses.spo_tracker_init()},
    schedule=rl_schedule,
    prepare=prepare,
)

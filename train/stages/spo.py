"""SPO (the reference's form): one completion per prompt, a Beta value tracker as the baseline.

A = clip(r - (b * 6 - 3), -5, 5) with b = alpha / (alpha + beta) read before the update; per-token loss
`-logp * A + beta * KL`. The tracker only needs the rewards and the sampling policy's log-probs, so the
sequential per-micro-batch updates are computed once at rollout time (advantages) and again inside the jitted
step (the new tracker, which is checkpointed with the rest of the state). `--spo_mode paper` swaps in the paper's
algorithm, train/spo_paper.py.
"""
import jax

import losses
from minimind_jax.data import RLAIFDataset
from train import spo_paper
from train.rl import rollout_batch
from train.rollout import policy_logps
from train.stage import Stage, rl_schedule
from train.stages.grpo import init


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


_tracker_scan = jax.jit(tracker_scan)


def prepare(run, state, frozen, arrays, host, step):
    batch, info = rollout_batch(run, state.params, frozen, arrays, host, step, old_params=state.params)
    _, (advantages, baseline, rho) = _tracker_scan(state.extra["tracker"], batch["rewards"], batch["old_logps"],
                                                   batch["completion_mask"])
    batch["advantages"] = advantages
    info.update(baseline=float(baseline[-1]), rho=float(rho[-1]))
    return batch, info


def make_loss(run):
    model, a = run.model, run.args

    def loss_fn(params, batch, rng, frozen, extra):
        logps, aux = policy_logps(model, params, batch, rng)                             # [N, R]
        pg, metrics = losses.spo_loss(logps, batch["ref_logps"], batch["advantages"], batch["completion_mask"],
                                      a.beta, kl_estimator=a.kl_estimator, return_metrics=True)
        loss = pg + aux
        return loss, {"loss": loss, "policy_loss": pg, "aux_loss": aux, **metrics}

    return loss_fn


def update_extra(run):
    def update(extra, params, batch, step):
        tracker, _ = tracker_scan(extra["tracker"], batch["rewards"], batch["old_logps"], batch["completion_mask"])
        return {**extra, "tracker": tracker}
    return update


def by_mode(minimind, paper):
    """A stage hook that is the reference's, or the paper's with `--spo_mode paper`."""
    return lambda run, *args: (paper if run.args.spo_mode == "paper" else minimind)(run, *args)


STAGE = Stage(
    name="spo",
    defaults=dict(learning_rate=1e-7, batch_size=2, accumulation_steps=4, max_seq_len=66, max_gen_len=1536,
                  epochs=1, beta=0.02, from_weight=lambda a: "reason" if a.reasoning else "full_sft",
                  save_weight="spo"),
    data_file="rlaif.jsonl",
    dataset=RLAIFDataset,
    make_loss=by_mode(make_loss, spo_paper.make_loss),
    init=init,
    init_extra=by_mode(lambda run, params, frozen: {"tracker": losses.spo_tracker_init()}, spo_paper.init_extra),
    schedule=rl_schedule,
    prepare=by_mode(prepare, spo_paper.prepare),
    update_extra=by_mode(update_extra, spo_paper.update_extra),
)

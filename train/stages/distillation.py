"""Knowledge distillation: `alpha * (CE + aux) + (1 - alpha) * T^2 * KL(teacher || student)`.

The teacher is a second, frozen MiniMind with its own config (reference: student 512x8, teacher 768x16, both from
full_sft); its logits are cut to the student's vocabulary. `--from_teacher_weight none` trains on CE alone.
"""
import jax
import jax.numpy as jnp

import losses
from minimind_jax import MiniMindConfig, MiniMindForCausalLM
from minimind_jax.data import SFTDataset
from train.stage import Stage, load_or_init


def teacher_config(run) -> MiniMindConfig:
    """The student's config at the teacher's size (intermediate_size derived again from the new width)."""
    a = run.args
    return MiniMindConfig.from_dict({**run.cfg.to_dict(), "hidden_size": a.teacher_hidden_size,
                                     "num_hidden_layers": a.teacher_num_layers, "intermediate_size": None})


def init(run, rng):
    a = run.args
    student = load_or_init(run, rng, a.from_student_weight, flag="--from_student_weight")
    teacher = None
    if a.from_teacher_weight not in (None, "", "none"):
        teacher = load_or_init(run, rng, a.from_teacher_weight, teacher_config(run), flag="--from_teacher_weight")
    return student, {"teacher": teacher}


def make_loss(run):
    student, a = run.model, run.args
    teacher = MiniMindForCausalLM(teacher_config(run), policy=student.policy)

    def loss_fn(params, batch, rng, frozen, extra):
        out = student.apply({"params": params}, batch["input_ids"], train=True, rngs={"dropout": rng})
        labels, mask = batch["labels"], batch["loss_mask"]                       # [B, T]
        # CE with ignore_index=0 (pad targets add nothing) over the mask's count, as the reference computes it.
        logp = losses.token_logprobs(out.logits, labels)
        ce = -jnp.sum(logp * mask * (labels != 0)) / jnp.sum(mask)
        metrics = {"ce": ce, "aux_loss": out.aux_loss}
        if frozen["teacher"] is None:
            loss = ce + out.aux_loss
        else:
            teacher_logits = jax.lax.stop_gradient(
                teacher.apply({"params": frozen["teacher"]}, batch["input_ids"]).logits)      # [B, T, V_teacher]
            kl = losses.distill_kl(out.logits, teacher_logits, mask, a.temperature)
            loss = a.alpha * (ce + out.aux_loss) + (1 - a.alpha) * kl
            metrics["distill"] = kl
        return loss, {"loss": loss, **metrics}

    return loss_fn


STAGE = Stage(
    name="distillation",
    defaults=dict(learning_rate=5e-6, batch_size=32, accumulation_steps=1, max_seq_len=340, epochs=6,
                  from_weight="full_sft", from_student_weight="full_sft", from_teacher_weight="full_sft",
                  teacher_hidden_size=768, teacher_num_layers=16, save_weight="full_dist"),
    data_file="sft.jsonl",
    dataset=SFTDataset,
    make_loss=make_loss,
    init=init,
)

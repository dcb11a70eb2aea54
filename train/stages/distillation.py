"""Knowledge distillation: `alpha * (CE + aux) + (1 - alpha) * T^2 * KL(teacher || student)`.

The teacher is a second, frozen MiniMind with its own config (reference: student 512x8, teacher 768x16, both from
full_sft); its logits are cut to the student's vocabulary. `--from_teacher_weight none` trains on CE alone.
"""
import jax

import losses
from minimind_jax import MiniMindConfig, MiniMindForCausalLM
from train.stage import Stage
from train.weights import start_params


def teacher_config(run) -> MiniMindConfig:
    """The student's config at the teacher's size and MoE choice (the widths that follow hidden_size derived
    again). MiniMind-3 distils a dense student from an MoE teacher (`--teacher_use_moe 1`)."""
    d, student = run.config.distill, run.config.model
    use_moe = student.use_moe if d.teacher_use_moe is None else d.teacher_use_moe
    return MiniMindConfig.from_dict({**student.to_dict(), "hidden_size": d.teacher_hidden_size,
                                     "num_hidden_layers": d.teacher_num_layers, "use_moe": use_moe,
                                     "intermediate_size": None, "head_dim": None, "moe_intermediate_size": None})


def init(run):
    c, d = run.config, run.config.distill
    student = start_params(c, d.from_student_weight, flag="--from_student_weight")
    teacher = None
    if d.from_teacher_weight not in (None, "", "none"):
        teacher = start_params(c, d.from_teacher_weight, teacher_config(run), flag="--from_teacher_weight")
    return student, {"teacher": teacher}


def make_loss(run):
    student, d = run.model, run.config.distill
    teacher = MiniMindForCausalLM(teacher_config(run), policy=student.policy)

    def loss_fn(params, batch, key, frozen, extra):
        out = student.apply({"params": params}, batch["input_ids"], train=True, rngs={"dropout": key})
        labels, mask = batch["labels"], batch["loss_mask"]                       # [B, T]
        ce = losses.masked_ce(out.logits, labels, mask, ignore_id=0)           # pad targets add nothing
        metrics = {"ce": ce, "aux_loss": out.aux_loss}
        if frozen["teacher"] is None:
            loss = ce + out.aux_loss
        else:
            teacher_logits = jax.lax.stop_gradient(
                teacher.apply({"params": frozen["teacher"]}, batch["input_ids"]).logits)      # [B, T, V_teacher]
            kl = losses.distill_kl(out.logits, teacher_logits, mask, d.temperature)
            loss = d.alpha * (ce + out.aux_loss) + (1 - d.alpha) * kl
            metrics["distill"] = kl
        return loss, {"loss": loss, **metrics}

    return loss_fn


STAGE = Stage(
    name="distillation",
    defaults=dict(learning_rate=5e-6, batch_size=32, accumulation_steps=1, max_seq_len=340, epochs=6,
                  from_weight="full_sft", from_student_weight="full_sft", from_teacher_weight="full_sft",
                  teacher_hidden_size=768, teacher_num_layers=16, save_weight="full_dist"),
    defaults3=dict(teacher_hidden_size=768, teacher_num_layers=8, teacher_use_moe=1),
    data_file="sft.jsonl",
    dataset="sft",
    make_loss=make_loss,
    init=init,
)

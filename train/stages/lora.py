"""LoRA: rank-r adapters on every square projection, y = Wx + B(Ax); only the adapters train, clip and save.

The trainable pytree is the adapters alone and the base weights ride along frozen, so the optimizer state,
the gradient clipping and the checkpoint cover exactly what the reference's LoRA optimizer covers.
"""
from minimind_jax.convert import read_state_dict
from minimind_jax.lora import apply_lora, init_lora, lora_from_torch, lora_to_torch
from train import rng
from train.errors import UsageError
from train.stage import Stage
from train.stages.common import lm_loss
from train.weights import start_params


def init(run):
    """Adapters drawn from the seed, or `--lora_init PATH` (a safetensors/.pth under the reference's names) so a run
    can start from the very adapters another one (e.g. the reference's) started from."""
    c = run.config
    base = start_params(c)
    if not c.lora.init:
        return init_lora(rng.stream(c.seed, "adapters"), base, c.model, rank=c.lora.rank), {"base": base}
    source = f"--lora_init {c.lora.init}"
    try:
        lora = lora_from_torch(read_state_dict(c.lora.init), base, c.model, source=source, rank=c.lora.rank)
    except (OSError, ValueError, ImportError) as e:
        raise UsageError(str(e) if str(e).startswith(source) else f"{source}: {e}") from None
    return lora, {"base": base}


def make_loss(run):
    lm = lm_loss(run)

    def loss_fn(lora, batch, key, frozen, extra):
        return lm(apply_lora(frozen["base"], lora), batch, key, None, extra)

    return loss_fn


def export(run, lora, frozen):
    return lora_to_torch(lora, run.config.model)


STAGE = Stage(
    name="lora",
    defaults=dict(learning_rate=1e-4, batch_size=32, accumulation_steps=1, max_seq_len=340, epochs=50,
                  from_weight="full_sft", lora_rank=8, save_weight=lambda flags: flags.lora_name),
    defaults3=dict(epochs=10, lora_rank=16),
    data_file="lora_identity.jsonl",
    dataset="sft",
    make_loss=make_loss,
    init=init,
    export=export,
)

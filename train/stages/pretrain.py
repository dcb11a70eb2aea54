"""Pretraining: next-token cross-entropy on raw text, `sum(CE * mask) / sum(mask) + aux`."""
import losses
from minimind_jax.data import PretrainDataset
from train.stage import Stage


def lm_loss(run):
    """The causal-LM objective shared by pretrain, full_sft and lora."""
    model = run.model

    def loss_fn(params, batch, rng, frozen, extra):
        out = model.apply({"params": params}, batch["input_ids"], train=True, rngs={"dropout": rng})  # logits [B, T, V]
        ce = losses.masked_ce(out.logits, batch["labels"], batch["loss_mask"])
        loss = ce + out.aux_loss
        return loss, {"loss": loss, "ce": ce, "aux_loss": out.aux_loss}

    return loss_fn


STAGE = Stage(
    name="pretrain",
    defaults=dict(learning_rate=5e-4, batch_size=32, accumulation_steps=8, max_seq_len=340, epochs=1,
                  from_weight="none", save_weight="pretrain"),
    data_file="pretrain.jsonl",
    dataset=PretrainDataset,
    make_loss=lm_loss,
)

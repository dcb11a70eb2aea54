"""Pretraining: next-token cross-entropy on raw text, `sum(CE * mask) / sum(mask) + aux`."""
from train.stage import Stage
from train.stages.common import lm_loss

STAGE = Stage(
    name="pretrain",
    defaults=dict(learning_rate=5e-4, batch_size=32, accumulation_steps=8, max_seq_len=340, epochs=1,
                  from_weight="none", save_weight="pretrain"),
    defaults3=dict(epochs=2),
    data_file="pretrain.jsonl",
    dataset="pretrain",
    make_loss=lm_loss,
)

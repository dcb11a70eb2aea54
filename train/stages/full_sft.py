"""Full supervised fine-tuning on chat data: the pretraining loss on the assistant spans only (the SFT mask)."""
from train.stage import Stage
from train.stages.common import lm_loss

STAGE = Stage(
    name="full_sft",
    defaults=dict(learning_rate=1e-6, batch_size=16, accumulation_steps=1, max_seq_len=340, epochs=2,
                  from_weight="pretrain", save_weight="full_sft"),
    defaults3=dict(learning_rate=1e-5, max_seq_len=768),
    data_file="sft.jsonl",
    dataset="sft",
    make_loss=lm_loss,
)

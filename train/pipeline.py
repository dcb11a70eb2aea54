"""`--stage all`: every stage in the reference's order, each starting from the weights the previous one saved.

With `--preset tiny` the pipeline is a CPU demo that finishes in minutes, so each stage gets the settings below
instead of the reference's (which are tuned for continuing a trained 26M model: an SFT rate of 1e-6 would not move
a tiny model trained for a minute). Any flag given on the command line still wins.
"""
from train import stages
from train.args import PIPELINE

TINY = {
    "pretrain": dict(epochs=1, max_steps=200, batch_size=32, accumulation_steps=1, max_seq_len=128,
                     learning_rate=3e-3),
    "full_sft": dict(epochs=1, max_steps=150, batch_size=32, max_seq_len=128, learning_rate=2e-3),
    "lora": dict(epochs=4, batch_size=16, max_seq_len=128, learning_rate=5e-3),
    "distillation": dict(epochs=1, max_steps=40, max_seq_len=128, learning_rate=2e-4),
    "dpo": dict(epochs=1, max_steps=40, batch_size=8, max_seq_len=256, learning_rate=1e-5),
    "reason": dict(epochs=1, max_steps=80, batch_size=32, max_seq_len=128, learning_rate=2e-3),
    "reward": dict(epochs=1, max_steps=60, batch_size=16, max_seq_len=256, learning_rate=1e-3),
    "ppo": dict(max_steps=10, batch_size=4, max_gen_len=32, learning_rate=1e-5, critic_learning_rate=1e-4),
    "grpo": dict(max_steps=10, batch_size=2, num_generations=4, max_gen_len=32, learning_rate=1e-5),
    "spo": dict(max_steps=10, batch_size=4, accumulation_steps=1, max_gen_len=32, learning_rate=1e-5),
}


# MiniMind-3's chat rows carry tool schemas (~130 tokens each) and think blocks: a longer window keeps their answers,
# and SFT sees the sample's tool conversations (~470 tokens) whole.
TINY3 = {"full_sft": dict(max_seq_len=512), "lora": dict(max_seq_len=256), "distillation": dict(max_seq_len=256),
         "dpo": dict(max_seq_len=256), "ppo": dict(max_seq_len=128), "grpo": dict(max_seq_len=128)}


def stage_plan(args, given: set[str]) -> list[tuple[str, dict]]:
    """[(stage, overrides)] for `--stage all`: the stages of the run's MiniMind generation, with the tiny demo's
    settings unless a flag was given explicitly; the pipeline trains one model size, so distillation's teacher is
    that size's full_sft model."""
    from train.config import model_config
    cfg = model_config(args)
    plan = []
    for name in [n for n in PIPELINE if n in stages.available() and cfg.generation in stages.get(n).generations]:
        tiny = {**TINY.get(name, {}), **(TINY3.get(name, {}) if cfg.generation == 3 else {})}
        overrides = {k: v for k, v in tiny.items() if k not in given} if args.preset == "tiny" else {}
        if name == "distillation":
            overrides.setdefault("teacher_hidden_size", args.teacher_hidden_size or cfg.hidden_size)
            overrides.setdefault("teacher_num_layers", args.teacher_num_layers or cfg.num_hidden_layers)
            overrides.setdefault("teacher_use_moe", int(cfg.use_moe) if args.teacher_use_moe is None
                                 else args.teacher_use_moe)
        plan.append((name, overrides))
    return plan

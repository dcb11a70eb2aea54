"""Command-line flags: the reference's names (so MiniMind users feel at home) plus this project's additions.

Flags whose default depends on the stage (learning rate, batch size, ...) are None here and filled from the
stage's `defaults` (the reference's values); `config.TrainConfig.from_flags` then turns the namespace into the typed,
validated configuration everything else reads. This module imports nothing heavy, so `--help` is instant.
"""
import argparse
import sys

STAGE_NAMES = ["pretrain", "full_sft", "lora", "distillation", "reason", "dpo", "reward", "ppo", "grpo", "spo",
               "spo_paper", "agent"]
ALIASES = {"sft": "full_sft", "distill_reason": "reason", "distill": "distillation"}
PIPELINE = ["pretrain", "full_sft", "lora", "distillation", "dpo", "reason", "reward", "ppo", "grpo", "spo"]


class OneLineParser(argparse.ArgumentParser):
    """A flag mistake is one line (what is wrong and what to do), exit code 2: like every other user error."""

    def error(self, message):
        print(f"error: {message} (see python -m train.run --help)", file=sys.stderr)
        sys.exit(2)


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m train.run", description="Train MiniMind in JAX: one engine, every stage.",
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = p.add_argument
    add("--stage", required=True, help=f"one of {STAGE_NAMES}, an alias {sorted(ALIASES)}, or 'all' (the pipeline); "
                                       f"`--stage X --help` shows X's defaults")
    add = p.add_argument_group("model").add_argument
    add("--minimind", type=int, default=2, choices=[2, 3],
        help="the MiniMind generation: 2 (a8455ca, January 2026) or 3 (March 2026: QK-norm, its own tokenizer, chat "
             "template, data formats and defaults)")
    add("--preset", default="small", choices=["tiny", "small", "base", "moe"],
        help="model size (generation 3: tiny, small = minimind-3 64M, moe = minimind-3-moe 198M-A64M); flags below "
             "override")
    add("--hidden_size", type=int, default=None, help="model width (default: the preset's)")
    add("--num_hidden_layers", type=int, default=None, help="layers (default: the preset's)")
    add("--use_moe", type=int, default=None, choices=[0, 1], help="1: mixture-of-experts FFN (default: the preset's)")
    add("--moe_capacity_factor", type=float, default=None,
        help="MoE: drop token-expert pairs beyond this multiple of an expert's balanced share (logged as "
             "moe_dropped_frac); default: none dropped, exact")
    add("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
        help="auto: bfloat16 on GPU/TPU, float32 on CPU")
    add = p.add_argument_group("optimisation (None: the stage's reference default)").add_argument
    add("--epochs", type=int, default=None, help="passes over the data")
    add("--batch_size", type=int, default=None, help="global batch (all devices and hosts together)")
    add("--learning_rate", type=float, default=None, help="peak rate of the cosine schedule (to a tenth of it)")
    add("--accumulation_steps", type=int, default=None, help="micro-batches per optimizer step")
    add("--grad_clip", type=float, default=1.0, help="global-norm clipping (0: none)")
    add("--max_seq_len", type=int, default=None, help="RL stages: the prompt length")
    add("--max_steps", type=int, default=None, help="stop after this many optimizer steps in all (the schedule still "
                                                    "spans --epochs, so a stopped run resumed is the same run)")
    add("--seed", type=int, default=42, help="the one RNG root: data order, init, dropout, sampling")
    add("--nonfinite", default="stop", choices=["stop", "skip"],
        help="a step whose loss or gradients are not finite is never applied; stop: end the run (checkpoint kept) "
             "after --nonfinite_patience such steps in a row; skip: carry on")
    add("--nonfinite_patience", type=int, default=3, help="non-finite steps in a row that end a run (--nonfinite stop)")
    add = p.add_argument_group("data").add_argument
    add("--data_path", default=None, help="jsonl file; default: the stage's file in data/sample/")
    add("--tokenizer", default=None, help="a tokenizer dir or file, or minimind (MiniMind-2's own BPE, shipped) / minimind3; "
                                        "default: this project's SentencePiece (not MiniMind's; --minimind 3: minimind3)")
    add("--skip_bad_lines", action="store_true", help="skip malformed jsonl rows (counted) instead of stopping")
    add("--add_system_ratio", type=float, default=None, help="MiniMind-3 data: chance of a random system prompt "
                                                             "(default 0.2; 0: never)")
    add("--empty_think_ratio", type=float, default=None, help="MiniMind-3 data: chance an empty think block is kept "
                                                              "(default 0.2)")
    add("--thinking_ratio", type=float, default=None, help="MiniMind-3 prompts: chance of an open think block")
    add("--cache_dir", default=None, help="where tokenized data is cached (default: ~/.cache/minimind_jax)")
    add("--eval_data", default=None, help="SFT family: a held-out jsonl of the stage's format; its loss and perplexity "
                                          "are logged every --eval_interval steps and at the end")
    add("--eval_interval", type=int, default=None, help="steps between evaluations (default: --save_interval)")
    add("--num_workers", type=int, default=None,
        help="accepted for the reference's scripts; here tokenizing runs once into the cache, in its own processes")
    add = p.add_argument_group("weights, checkpoints, logs").add_argument
    add("--out_dir", "--save_dir", dest="out_dir", default="out",
        help="where runs are written (--save_dir: the reference's name)")
    add("--from_weight", default=None, help="NAME (loads <out_dir>/NAME_<hidden>/weights.safetensors), a path, or none")
    add("--save_weight", default=None, help="the run's name: <out_dir>/<save_weight>_<hidden>[_moe]")
    add("--from_resume", type=int, default=0, choices=[0, 1], help="1: continue exactly from the last checkpoint")
    add("--resume_accept", default="", help="comma-separated settings a resumed run may change from the checkpoint's "
                                             "(learning_rate, epochs, grad_clip, dtype, objective); others are refused")
    add("--overwrite", action="store_true", help="start afresh over a run directory that holds checkpoints (they are "
                                                  "deleted); without it such a fresh run is refused")
    add("--log_interval", type=int, default=None, help="steps between log lines (default 100; RL stages 1)")
    add("--save_interval", type=int, default=100, help="steps between checkpoints (and at the end)")
    add("--use_wandb", action="store_true", help="also log to wandb (or swanlab) when installed")
    add("--wandb_project", default="minimind-jax", help="the wandb/swanlab project")
    add("--wandb_run", default=None, help="the wandb/swanlab run name (default: the run directory's name)")
    add = p.add_argument_group("devices").add_argument
    add("--device", default=None, help="accepted for the reference's scripts: 'cpu' runs on the CPU; otherwise JAX "
                                       "uses every accelerator it sees (choose with CUDA_VISIBLE_DEVICES)")
    add("--compile_cache", default="auto", help="where compiled programs are kept across runs (auto: beside the token "
                                                 "cache, ~/.cache/minimind_jax/xla; none: off)")
    add("--use_compile", type=int, default=None, choices=[0, 1],
        help="accepted for the reference's scripts: every step here is compiled (jit) anyway")
    add("--mesh", default=None, help="e.g. data=4 or data=2,fsdp=4 (default: every device on data)")
    add("--coordinator_address", default=None, help="multi-host: host:port of process 0")
    add("--num_processes", type=int, default=None, help="multi-host: how many processes in all")
    add("--process_id", type=int, default=None, help="multi-host: this process's index (0 is the coordinator)")
    add("--distributed_timeout", type=int, default=300,
        help="multi-host: seconds to wait for every process to join (and for a silent one before giving up on it)")
    add("--coordinator_bind_address", default=None,
        help="multi-host: where process 0 listens (default: --coordinator_address itself; e.g. 0.0.0.0:PORT for all "
             "interfaces)")
    add = p.add_argument_group("lora").add_argument
    add("--lora_name", default="lora_identity", help="the adapters' run name (LoRA's --save_weight)")
    add("--lora_rank", type=int, default=None, help="default 8 (MiniMind-3: 16)")
    add("--lora_init", default=None, help="start from these adapters (safetensors or .pth under the reference's names, "
                                         "e.g. model.layers.0.self_attn.q_proj.lora.A.weight) instead of drawing them")
    add = p.add_argument_group("distillation").add_argument
    add("--alpha", type=float, default=0.5, help="weight of CE; (1-alpha) weighs the KL")
    add("--temperature", type=float, default=1.5, help="softens both distributions in the KL")
    add("--from_student_weight", default=None, help="the student's starting weights (NAME or path)")
    add("--from_teacher_weight", default=None, help="the teacher's weights (NAME or path; none: CE alone)")
    add("--teacher_hidden_size", type=int, default=None, help="the teacher's width")
    add("--teacher_num_layers", type=int, default=None, help="the teacher's depth")
    add("--teacher_use_moe", type=int, default=None, choices=[0, 1], help="1: an MoE teacher (default: as the student)")
    add("--student_hidden_size", type=int, default=None, help="alias of --hidden_size for distillation")
    add("--student_num_layers", type=int, default=None, help="alias of --num_hidden_layers for distillation")
    add("--student_use_moe", type=int, default=None, choices=[0, 1], help="alias of --use_moe for distillation")
    add = p.add_argument_group("dpo and rl objectives").add_argument
    add("--beta", type=float, default=None, help="DPO's beta; GRPO/SPO's KL weight")
    add("--dpo_sum_logps", type=int, default=None, choices=[0, 1],
        help="1: sequence log-prob as a sum, not a mean (default 0; MiniMind-3: 1)")
    add = p.add_argument_group("rl: rollouts").add_argument
    add("--max_gen_len", type=int, default=None, help="RL: new tokens per completion")
    add("--num_generations", type=int, default=None, help="GRPO: completions per prompt (default 8; MiniMind-3: 6)")
    add("--rollout_temperature", type=float, default=0.8, help="sampling temperature (0: greedy)")
    add("--rollout_top_p", type=float, default=None, help="nucleus sampling (default 1: off; MiniMind-3: 0.85)")
    add("--rollout_top_k", type=int, default=None, help="top-k sampling (default 0: off; MiniMind-3: 50)")
    add("--rollout_dtype", default="float32", choices=["float32", "bfloat16"],
        help="weights used while sampling (bfloat16 halves the bytes read per decoded token)")
    add = p.add_argument_group("rl: rewards").add_argument
    add("--reasoning", type=int, default=1, choices=[0, 1], help="1: add the <think>/<answer> format and tag reward")
    add("--answer_reward", type=float, default=1.0, help="weight of the exact-answer reward (rows with an answer)")
    add("--reward_model", "--reward_model_path", dest="reward_model", default=None,
        help="NAME or path of a reward model trained by --stage reward (--reward_model_path: the reference's name; "
             "a Hugging Face reward model goes through --reward_fn)")
    add("--reward_fn", default=None, help="module:function or file.py:function (prompts, responses, answers) -> "
                                         "float[B], added. Runs your code; a module is imported from the installed "
                                         "packages, not from the current directory (name a file for that)")
    add = p.add_argument_group("rl: objectives").add_argument
    add("--clip_epsilon", type=float, default=None, help="PPO / SPO-paper ratio clip (default 0.1; MiniMind-3: 0.2)")
    add("--vf_coef", type=float, default=0.5, help="PPO: weight of the value loss")
    add("--kl_coef", type=float, default=0.02, help="PPO: weight of the KL to the reference")
    add("--critic_learning_rate", type=float, default=None,
        help="PPO: the critic's peak learning rate (default 8e-8; MiniMind-3: 5e-7)")
    add("--update_old_actor_freq", type=int, default=4, help="PPO: steps between refreshes of the old actor")
    add("--kl_estimator", default="k3", choices=["k3", "k1"], help="per-token KL estimator in the RL losses")
    add("--spo_mode", default="minimind", choices=["minimind", "paper"],
        help="SPO: the reference's one global tracker, or the paper's per-prompt trackers, prioritised prompts and "
             "PPO-clip (the same as --stage spo_paper)")
    add("--spo_init_samples", type=int, default=0,
        help="SPO paper: completions per prompt sampled before training to set each prompt's prior (0: Beta(.5, .5))")
    add("--spo_rho_min", type=float, default=0.875, help="SPO paper: lower clip of the forgetting rate rho")
    add = p.add_argument_group("rl at MiniMind-3: GRPO's CISPO, PPO with GAE, the agent stage").add_argument
    add("--loss_type", default=None, choices=["cispo", "grpo"], help="GRPO at MiniMind-3 (default cispo)")
    add("--epsilon", type=float, default=0.2, help="the lower clip of the ratio (grpo loss_type; PPO)")
    add("--epsilon_high", type=float, default=5.0, help="CISPO: the ratio's weight is capped here")
    add("--gamma", type=float, default=1.0, help="PPO-GAE: discount")
    add("--lam", type=float, default=0.95, help="PPO-GAE: lambda")
    add("--cliprange_value", type=float, default=0.2, help="PPO-GAE: value clipping around the rollout's values")
    add("--ppo_update_iters", type=int, default=2, help="PPO-GAE: passes over each rollout batch")
    add("--mini_batch_size", type=int, default=2, help="PPO-GAE: rows per update minibatch")
    add("--early_stop_kl", type=float, default=0.25, help="PPO-GAE: stop a rollout's updates past this approx KL")
    add("--critic_double_norm", type=int, default=0, choices=[0, 1],
        help="parity with upstream MiniMind-3's critic, which applies the final norm twice")
    add("--max_turns", type=int, default=3, help="agent: tool-call turns per rollout")
    add("--max_total_len", type=int, default=2500, help="agent: tokens kept per rollout (prompt + turns)")
    add("--tools", default=None, help="agent: module:registry or file.py:registry of extra tools (runs your code)")
    add("--tool_timeout", type=float, default=1.0, help="agent: seconds one tool call may take")
    add("--rule_reward", type=int, default=1, choices=[0, 1],
        help="MiniMind-3 RL: 1: upstream's rule reward (agent: calls against gt, the final answer, format), plus "
             "any --reward_fn; 0: the --reward_fn (and a --reward_model) alone")
    return p


def canonical_stage(name: str, spo_mode: str = "minimind") -> str:
    """The stage module a --stage (and --spo_mode) names; an unknown name is one line, exit code 2."""
    name = ALIASES.get(name, name)
    if name not in STAGE_NAMES + ["all"]:
        print(f"error: --stage {name!r}: expected one of {', '.join(STAGE_NAMES + ['all'])} (or {', '.join(ALIASES)})",
              file=sys.stderr)
        sys.exit(2)
    return "spo_paper" if name == "spo" and spo_mode == "paper" else name


def with_defaults(args: argparse.Namespace, defaults: dict) -> argparse.Namespace:
    """A copy of args where every flag left at None takes the stage's default (a callable default sees the args).
    The student flags of distillation are the model flags under the reference's names."""
    merged = argparse.Namespace(**vars(args))
    for student, model in (("student_hidden_size", "hidden_size"), ("student_num_layers", "num_hidden_layers"),
                           ("student_use_moe", "use_moe")):
        if getattr(merged, student, None) is not None and getattr(merged, model, None) is None:
            setattr(merged, model, getattr(merged, student))
    for key, value in defaults.items():
        if getattr(merged, key, None) is None:
            setattr(merged, key, value(merged) if callable(value) else value)
    return merged

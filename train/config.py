"""The run's configuration: frozen, typed, validated once, then passed down.

`TrainConfig.from_flags(namespace)` is the one place where flags become configuration; the CLI (train.run) and
Python callers build the same object, and every stage, the engine and the rollouts read only typed fields. Each
check names the flag to fix, so a bad value stops the run before any data is tokenized or anything compiled.
"""
import dataclasses
import math
from argparse import Namespace
from pathlib import Path

from minimind_jax import MiniMindConfig
from train.errors import UsageError

DTYPES = ("auto", "float32", "bfloat16", "float16")
# What a resumed run may change from its checkpoint when the user says so: none of it moves the data order or
# changes the shapes. The rest of the run's identity (stage, model, tokenizer, data, seed, batch) never may.
RESUME_ACCEPTABLE = ("learning_rate", "epochs", "grad_clip", "dtype", "objective")


def _positive(flag: str, value, kind=int) -> None:
    if not isinstance(value, kind) or isinstance(value, bool) or not value > 0 or (
            kind is float and not math.isfinite(value)):
        raise UsageError(f"--{flag} {value}: must be a positive {'integer' if kind is int else 'finite number'}")


def _non_negative(flag: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise UsageError(f"--{flag} {value}: must be a finite number >= 0")


def _fraction(flag: str, value: float, low_open=False) -> None:
    if not (math.isfinite(value) and (0 < value if low_open else 0 <= value) and value <= 1):
        raise UsageError(f"--{flag} {value}: must be in {'(0' if low_open else '[0'}, 1]")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    path: Path | None               # None: the stage's file in the embedded sample
    tokenizer: str | None           # None: the embedded tokenizer
    max_seq_len: int                # RL stages: the prompt length
    skip_bad_lines: bool = False
    cache_dir: str | None = None
    add_system_ratio: float | None = None   # MiniMind-3 formats' random rules (None: the format's default)
    empty_think_ratio: float | None = None
    thinking_ratio: float | None = None
    eval_path: Path | None = None           # held-out rows of the same format, evaluated during training
    eval_interval: int | None = None

    def __post_init__(self):
        if self.eval_path is not None and not self.eval_path.is_file():
            raise UsageError(f"--eval_data {self.eval_path}: no such file")
        if self.eval_interval is not None:
            _positive("eval_interval", self.eval_interval)
        for flag in ("add_system_ratio", "empty_think_ratio", "thinking_ratio"):
            if getattr(self, flag) is not None:
                _fraction(flag, getattr(self, flag))
        if self.max_seq_len is None or not isinstance(self.max_seq_len, int) or self.max_seq_len < 2:
            raise UsageError(f"--max_seq_len {self.max_seq_len}: must be an integer >= 2")
        if self.path is not None:
            if self.path.is_dir():
                raise UsageError(f"--data_path {self.path}: is a directory; pass a .jsonl file")
            if not self.path.exists():
                raise UsageError(f"--data_path {self.path}: no such file")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    epochs: int
    batch_size: int                 # global: all devices and hosts together
    accumulation_steps: int
    learning_rate: float
    grad_clip: float = 1.0
    max_steps: int | None = None    # stop after this many optimizer steps (the schedule still spans `epochs`)
    dtype: str = "auto"
    nonfinite: str = "stop"         # a non-finite step is never applied; 'stop' ends the run after `patience` in a row
    nonfinite_patience: int = 3

    def __post_init__(self):
        _positive("epochs", self.epochs)
        _positive("batch_size", self.batch_size)
        _positive("accumulation_steps", self.accumulation_steps)
        _non_negative("learning_rate", float(self.learning_rate))       # 0: a frozen policy (evaluation runs)
        _non_negative("grad_clip", self.grad_clip)
        if self.max_steps is not None:
            _positive("max_steps", self.max_steps)
        if self.dtype not in DTYPES:
            raise UsageError(f"--dtype {self.dtype}: expected one of {', '.join(DTYPES)}")
        if self.nonfinite not in ("stop", "skip"):
            raise UsageError(f"--nonfinite {self.nonfinite}: expected stop or skip")
        _positive("nonfinite_patience", self.nonfinite_patience)

    @property
    def global_batch(self) -> int:
        """Rows per optimizer step."""
        return self.accumulation_steps * self.batch_size


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    max_gen_len: int | None = None  # new tokens per completion (RL stages)
    num_generations: int = 8        # GRPO: completions per prompt
    temperature: float = 0.8
    top_p: float = 1.0
    top_k: int = 0
    dtype: str = "float32"          # weights while sampling

    def __post_init__(self):
        if self.max_gen_len is not None:
            _positive("max_gen_len", self.max_gen_len)
        _positive("num_generations", self.num_generations)
        _non_negative("rollout_temperature", self.temperature)
        _fraction("rollout_top_p", self.top_p, low_open=True)
        if self.top_k < 0:
            raise UsageError(f"--rollout_top_k {self.top_k}: must be >= 0 (0: no top-k)")
        if self.dtype not in ("float32", "bfloat16"):
            raise UsageError(f"--rollout_dtype {self.dtype}: expected float32 or bfloat16")


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    reasoning: bool = True          # the <think>/<answer> format and tag reward
    answer_weight: float = 1.0      # exact-answer reward on rows with an answer
    reward_model: str | None = None # NAME or path of a reward model (train it with --stage reward)
    reward_fn: str | None = None    # module:function(prompts, responses, answers) -> float[B], added
    rule_reward: bool = True        # MiniMind-3's rule reward; off, --reward_fn alone scores the rollouts

    def __post_init__(self):
        _non_negative("answer_reward", self.answer_weight)
        if self.reward_fn is not None and ":" not in self.reward_fn:
            raise UsageError(f"--reward_fn {self.reward_fn}: expected module:function")
        if not self.rule_reward and self.reward_fn is None:
            raise UsageError("--rule_reward 0: nothing would score the rollouts; give a --reward_fn")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    out_dir: Path
    save_weight: str                # the run directory is <out_dir>/<save_weight>_<hidden>[_moe]
    from_weight: str | None         # NAME, a path, or None/'none' for a random init
    from_resume: bool = False
    save_interval: int = 100
    log_interval: int = 10
    use_wandb: bool = False
    wandb_project: str = "minimind-jax"
    wandb_run: str | None = None    # None: the run directory's name
    overwrite: bool = False         # a fresh run may delete the checkpoints it finds
    resume_accept: tuple[str, ...] = ()   # run-identity fields a resumed run may change

    def __post_init__(self):
        unknown = set(self.resume_accept) - set(RESUME_ACCEPTABLE)
        if unknown:
            raise UsageError(f"--resume_accept {','.join(self.resume_accept)}: {', '.join(sorted(unknown))} cannot be "
                             f"changed on resume (acceptable: {', '.join(RESUME_ACCEPTABLE)})")
        if self.overwrite and self.from_resume:
            raise UsageError("--overwrite with --from_resume 1: choose one (continue the run, or replace it)")
        _positive("save_interval", self.save_interval)
        _positive("log_interval", self.log_interval)
        if not self.save_weight or "/" in self.save_weight:
            raise UsageError(f"--save_weight {self.save_weight!r}: must be a plain name (no '/')")

    @property
    def fresh_init(self) -> bool:
        return self.from_weight in (None, "", "none")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    spec: str | None = None         # e.g. 'data=2,fsdp=4'; None: every device on data
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    timeout: int = 300              # seconds to wait for every process to join

    def __post_init__(self):
        _positive("distributed_timeout", self.timeout)


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    name: str = "lora_identity"
    rank: int = 8
    init: str | None = None         # adapters to start from, instead of drawing them

    def __post_init__(self):
        _positive("lora_rank", self.rank)


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    alpha: float = 0.5              # weight of CE; (1 - alpha) weighs the KL
    temperature: float = 1.5
    from_student_weight: str | None = None
    from_teacher_weight: str | None = None
    teacher_hidden_size: int | None = None
    teacher_num_layers: int | None = None
    teacher_use_moe: bool | None = None     # None: as the student

    def __post_init__(self):
        _fraction("alpha", self.alpha)
        _positive("temperature", float(self.temperature), float)


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """The preference and RL objectives' coefficients."""
    beta: float | None = None       # DPO's beta; GRPO/SPO's KL weight
    dpo_sum_logps: bool = False
    clip_epsilon: float = 0.1
    vf_coef: float = 0.5
    kl_coef: float = 0.02
    critic_learning_rate: float = 8e-8
    update_old_actor_freq: int = 4
    kl_estimator: str = "k3"

    def __post_init__(self):
        if self.beta is not None:
            _non_negative("beta", self.beta)
        _non_negative("clip_epsilon", self.clip_epsilon)
        _non_negative("vf_coef", self.vf_coef)
        _non_negative("kl_coef", self.kl_coef)
        _positive("critic_learning_rate", float(self.critic_learning_rate), float)
        _positive("update_old_actor_freq", self.update_old_actor_freq)


@dataclasses.dataclass(frozen=True)
class RL3Config:
    """MiniMind-3's RL: GRPO's loss (CISPO by default), PPO with GAE, and the agent stage's tool loop."""
    loss_type: str = "cispo"
    epsilon: float = 0.2
    epsilon_high: float = 5.0
    gamma: float = 1.0
    lam: float = 0.95
    cliprange_value: float = 0.2
    ppo_update_iters: int = 2
    mini_batch_size: int = 2
    early_stop_kl: float = 0.25
    critic_double_norm: bool = False
    max_turns: int = 3
    max_total_len: int = 2500
    tools: str | None = None
    tool_timeout: float = 1.0

    def __post_init__(self):
        if self.loss_type not in ("cispo", "grpo"):
            raise UsageError(f"--loss_type {self.loss_type}: expected cispo or grpo")
        for flag in ("epsilon", "epsilon_high", "cliprange_value", "early_stop_kl"):
            _non_negative(flag, getattr(self, flag))
        _fraction("gamma", self.gamma)
        _fraction("lam", self.lam)
        for flag in ("ppo_update_iters", "mini_batch_size", "max_turns", "max_total_len"):
            _positive(flag, getattr(self, flag))
        _positive("tool_timeout", float(self.tool_timeout), float)


@dataclasses.dataclass(frozen=True)
class SPOPaperConfig:
    init_samples: int = 0           # completions per prompt sampled before training to set each prior
    rho_min: float = 0.875          # lower clip of the forgetting rate; the prior weighs 1 / (1 - rho_min)

    def __post_init__(self):
        if self.init_samples < 0:
            raise UsageError(f"--spo_init_samples {self.init_samples}: must be >= 0")
        if not 0 < self.rho_min < 1:
            raise UsageError(f"--spo_rho_min {self.rho_min}: must be in (0, 1)")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    stage: str
    seed: int
    model: MiniMindConfig
    data: DataConfig
    optim: OptimConfig
    checkpoint: CheckpointConfig
    mesh: MeshConfig = MeshConfig()
    rollout: RolloutConfig = RolloutConfig()
    reward: RewardConfig = RewardConfig()
    lora: LoraConfig = LoraConfig()
    distill: DistillConfig = DistillConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    spo_paper: SPOPaperConfig = SPOPaperConfig()
    rl3: RL3Config = RL3Config()

    def __post_init__(self):
        if not self.reward.rule_reward and self.model.generation != 3:
            raise UsageError("--rule_reward 0: turns off MiniMind-3's rule reward; at --minimind 2 the rule parts "
                             "are --reasoning 0 and --answer_reward 0")

    @classmethod
    def from_flags(cls, a: Namespace) -> "TrainConfig":
        """The typed configuration of a namespace whose stage defaults are already filled in (train.args)."""
        return cls(
            stage=a.stage, seed=a.seed, model=model_config(a),
            data=DataConfig(path=Path(a.data_path) if a.data_path else None, tokenizer=a.tokenizer,
                            max_seq_len=a.max_seq_len, skip_bad_lines=a.skip_bad_lines, cache_dir=a.cache_dir,
                            add_system_ratio=a.add_system_ratio, empty_think_ratio=a.empty_think_ratio,
                            thinking_ratio=a.thinking_ratio, eval_path=Path(a.eval_data) if a.eval_data else None,
                            eval_interval=a.eval_interval),
            optim=OptimConfig(epochs=a.epochs, batch_size=a.batch_size, accumulation_steps=a.accumulation_steps,
                              learning_rate=a.learning_rate, grad_clip=a.grad_clip, max_steps=a.max_steps,
                              dtype=a.dtype, nonfinite=a.nonfinite, nonfinite_patience=a.nonfinite_patience),
            checkpoint=CheckpointConfig(out_dir=Path(a.out_dir), save_weight=a.save_weight,
                                        from_weight=a.from_weight, from_resume=bool(a.from_resume),
                                        save_interval=a.save_interval, log_interval=a.log_interval,
                                        use_wandb=a.use_wandb, wandb_project=a.wandb_project,
                                        wandb_run=a.wandb_run, overwrite=a.overwrite,
                                        resume_accept=tuple(filter(None, a.resume_accept.split(",")))),
            mesh=MeshConfig(spec=a.mesh, coordinator_address=a.coordinator_address, num_processes=a.num_processes,
                            process_id=a.process_id, timeout=a.distributed_timeout),
            rollout=RolloutConfig(max_gen_len=a.max_gen_len,
                                  num_generations=_given(a.num_generations, RolloutConfig.num_generations),
                                  temperature=a.rollout_temperature, top_p=_given(a.rollout_top_p, RolloutConfig.top_p),
                                  top_k=_given(a.rollout_top_k, RolloutConfig.top_k), dtype=a.rollout_dtype),
            reward=RewardConfig(reasoning=bool(a.reasoning), answer_weight=a.answer_reward,
                                reward_model=a.reward_model, reward_fn=a.reward_fn,
                                rule_reward=bool(a.rule_reward)),
            lora=LoraConfig(name=a.lora_name, rank=LoraConfig.rank if a.lora_rank is None else a.lora_rank,
                            init=a.lora_init),
            distill=DistillConfig(alpha=a.alpha, temperature=a.temperature,
                                  from_student_weight=a.from_student_weight,
                                  from_teacher_weight=a.from_teacher_weight,
                                  teacher_hidden_size=a.teacher_hidden_size, teacher_num_layers=a.teacher_num_layers,
                                  teacher_use_moe=None if a.teacher_use_moe is None else bool(a.teacher_use_moe)),
            objective=ObjectiveConfig(beta=a.beta, dpo_sum_logps=bool(a.dpo_sum_logps),
                                      clip_epsilon=_given(a.clip_epsilon, ObjectiveConfig.clip_epsilon),
                                      vf_coef=a.vf_coef, kl_coef=a.kl_coef,
                                      critic_learning_rate=_given(a.critic_learning_rate,
                                                                  ObjectiveConfig.critic_learning_rate),
                                      update_old_actor_freq=a.update_old_actor_freq, kl_estimator=a.kl_estimator),
            spo_paper=SPOPaperConfig(init_samples=a.spo_init_samples, rho_min=a.spo_rho_min),
            rl3=RL3Config(loss_type=a.loss_type or "cispo", epsilon=a.epsilon, epsilon_high=a.epsilon_high,
                          gamma=a.gamma, lam=a.lam, cliprange_value=a.cliprange_value,
                          ppo_update_iters=a.ppo_update_iters, mini_batch_size=a.mini_batch_size,
                          early_stop_kl=a.early_stop_kl, critic_double_norm=bool(a.critic_double_norm),
                          max_turns=a.max_turns, max_total_len=a.max_total_len, tools=a.tools,
                          tool_timeout=a.tool_timeout))

    def replace(self, **sections) -> "TrainConfig":
        """A copy with some sections replaced, each given as a section or as a dict of its changed fields:
        `config.replace(rollout={'temperature': 0.0})`."""
        changes = {k: dataclasses.replace(getattr(self, k), **v) if isinstance(v, dict) else v
                   for k, v in sections.items()}
        return dataclasses.replace(self, **changes)


def _given(value, default):
    """A flag a stage may default (None when neither the user nor the stage set it): the section's own default."""
    return default if value is None else value


def model_config(a: Namespace) -> MiniMindConfig:
    """The preset, with the size flags the user gave on top; an impossible shape is a one-line error."""
    overrides = {k: v for k, v in (("hidden_size", a.hidden_size), ("num_hidden_layers", a.num_hidden_layers),
                                   ("use_moe", None if a.use_moe is None else bool(a.use_moe)),
                                   ("moe_capacity_factor", a.moe_capacity_factor)) if v is not None}
    for flag in ("hidden_size", "num_hidden_layers"):
        if flag in overrides:
            _positive(flag, overrides[flag])
    try:
        return MiniMindConfig.from_preset(a.preset, generation=a.minimind, **overrides)
    except ValueError as e:
        given = " ".join([f"--minimind {a.minimind}"] * (a.minimind != 2) + [f"--{k} {v}" for k, v in overrides.items()])
        raise UsageError(f"--preset {a.preset} {given}: {str(e).removeprefix('MiniMindConfig: ')}") from None

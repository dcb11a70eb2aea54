"""The command line a MiniMind user brings: the reference trainers' flags with their meaning, an instant and
grouped --help with each stage's defaults, the Python API, held-out evaluation, and a console that informs."""
import json
import subprocess
import sys

import pytest

from tests.helpers import REPO
from tests.train.helpers import TINY, train
from train.args import parser
from train.run import config_of

# Every flag of the reference's trainer scripts (MiniMind a8455ca), with what it must become here.
COMMON = {"--save_dir": ("out_dir", "runs/x"), "--save_weight": ("save_weight", "mine"), "--epochs": ("epochs", 3),
          "--batch_size": ("batch_size", 4), "--learning_rate": ("learning_rate", 1e-4), "--device": ("device", "cpu"),
          "--dtype": ("dtype", "float32"), "--num_workers": ("num_workers", 2),
          "--accumulation_steps": ("accumulation_steps", 2), "--grad_clip": ("grad_clip", 0.5),
          "--log_interval": ("log_interval", 5), "--save_interval": ("save_interval", 50),
          "--hidden_size": ("hidden_size", 64), "--num_hidden_layers": ("num_hidden_layers", 2),
          "--max_seq_len": ("max_seq_len", 128), "--use_moe": ("use_moe", 1), "--data_path": ("data_path", "d.jsonl"),
          "--from_weight": ("from_weight", "pretrain"), "--from_resume": ("from_resume", 1),
          "--use_wandb": ("use_wandb", True), "--wandb_project": ("wandb_project", "MiniMind-Test")}
RL = {"--max_gen_len": ("max_gen_len", 64), "--beta": ("beta", 0.05), "--reasoning": ("reasoning", 0),
      "--reward_model_path": ("reward_model", "reward")}
REFERENCE_FLAGS = {
    "pretrain": COMMON, "full_sft": COMMON, "reason": COMMON,
    "lora": {**COMMON, "--lora_name": ("lora_name", "lora_medical")},
    "distillation": {**COMMON, "--student_hidden_size": ("student_hidden_size", 64),
                     "--student_num_layers": ("student_num_layers", 2), "--teacher_hidden_size": ("teacher_hidden_size", 128),
                     "--teacher_num_layers": ("teacher_num_layers", 4), "--from_student_weight": ("from_student_weight", "s"),
                     "--from_teacher_weight": ("from_teacher_weight", "t"), "--alpha": ("alpha", 0.3),
                     "--temperature": ("temperature", 2.0)},
    "dpo": {**COMMON, "--beta": ("beta", 0.2)},
    "grpo": {**COMMON, **RL, "--num_generations": ("num_generations", 4)},
    "spo": {**COMMON, **RL},
    "ppo": {**COMMON, **RL, "--clip_epsilon": ("clip_epsilon", 0.2), "--vf_coef": ("vf_coef", 0.3),
            "--kl_coef": ("kl_coef", 0.05), "--critic_learning_rate": ("critic_learning_rate", 1e-7),
            "--update_old_actor_freq": ("update_old_actor_freq", 2)},
}


@pytest.mark.parametrize("stage", sorted(REFERENCE_FLAGS))
def test_every_reference_flag_is_accepted_with_its_meaning(stage, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.jsonl").write_text("{}\n")
    flags = REFERENCE_FLAGS[stage]
    argv = ["--stage", stage]
    for flag, (_, value) in flags.items():
        argv += [flag] if value is True else [flag, str(value)]
    namespace = parser().parse_args(argv)
    for flag, (dest, value) in flags.items():
        assert getattr(namespace, dest) == value, flag
    _, config = config_of(namespace)                       # and they reach the typed configuration
    assert str(config.checkpoint.out_dir) == "runs/x" and config.optim.learning_rate == 1e-4
    if stage == "distillation":
        assert (config.model.hidden_size, config.model.num_hidden_layers) == (64, 2)    # the student flags
        assert (config.distill.teacher_hidden_size, config.distill.teacher_num_layers) == (128, 4)
    if "--reward_model_path" in flags:
        assert config.reward.reward_model == "reward"


def test_log_interval_defaults_are_the_reference_ones():
    sft = config_of(parser().parse_args(["--stage", "full_sft"]))[1]
    rl = config_of(parser().parse_args(["--stage", "grpo"]))[1]
    assert (sft.checkpoint.log_interval, rl.checkpoint.log_interval) == (100, 1)


def test_help_does_not_import_jax_and_every_flag_has_help():
    code = ("import sys, contextlib, io\nfrom train.run import main\n"
            "buf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf):\n"
            "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
            "print('jax' in sys.modules)\nprint(buf.getvalue())")
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.splitlines()[0] == "False", p.stdout[:300] + p.stderr[-500:]
    assert "model:" in p.stdout and "rl: rewards:" in p.stdout                      # grouped
    for action in parser()._actions:
        assert action.help, f"{action.option_strings} has no help"


def test_stage_help_shows_the_stage_defaults(capsys):
    from train.run import main
    main(["--stage", "dpo", "--help"])
    out = capsys.readouterr().out
    assert "--stage dpo: DPO" in out and "(default: 4e-08)" in out and "(default: 0.1)" in out


def test_a_typo_is_one_line(capsys):
    from train.run import main
    with pytest.raises(SystemExit) as e:
        main(["--stage", "pretrain", "--dtype", "fp64"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "--dtype" in err[0]


def test_python_api_runs_a_stage(tmp_path, sample_slices):
    from train import configure, train as run
    stage, config = configure("pretrain", preset="tiny", dtype="float32", batch_size=4, accumulation_steps=1,
                              max_seq_len=32, max_steps=3, log_interval=1, out_dir=str(tmp_path),
                              data_path=str(sample_slices["pretrain"]))
    result = run((stage, config))
    assert [r["step"] for r in result.metrics] == [1, 2, 3] and (result.run_dir / "weights.safetensors").exists()
    with pytest.raises(TypeError, match="unknown flag"):
        configure("pretrain", no_such_flag=1)


def test_console_informs(tmp_path, sample_slices, capsys):
    flags = ["--data_path", str(sample_slices["pretrain"]), "--batch_size", "8", "--accumulation_steps", "4",
             "--max_seq_len", "32", "--max_steps", "3"]
    train(tmp_path, "pretrain", *flags)
    out, err = capsys.readouterr()
    assert "trainable params" in out and "writing to" in out and "saved to" in out
    assert "step 1/1 · epoch 1/1" in out                                          # 32 rows / 32 per step
    assert "--max_steps 3 but 32 rows" in err                                     # fewer steps than asked
    train(tmp_path, "pretrain", *flags, "--epochs", "2", "--from_resume", "1", "--resume_accept", "epochs")
    out, _ = capsys.readouterr()
    assert "resumed from step 1" in out and "accepted changes: epochs 1 -> 2" in out
    events = [json.loads(l) for l in (tmp_path / "pretrain_64" / "metrics.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "resumed with changed settings" for e in events)


def test_held_out_evaluation_is_logged(tmp_path, sample_slices):
    rec = train(tmp_path, "full_sft", "--from_weight", "none", "--data_path", str(sample_slices["sft"]),
                "--eval_data", str(sample_slices["sft"]), "--eval_interval", "2", "--batch_size", "8",
                "--max_seq_len", "64", "--max_steps", "4")
    evals = [r for r in rec if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert all(r["eval_ppl"] == pytest.approx(2.718281828 ** r["eval_ce"], rel=1e-6) for r in evals)
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] + 1e-3

"""Every SFT-family stage trains on the embedded sample and its loss falls; `--stage all` runs end to end."""
import math
import shutil

import numpy as np
import pytest

from minimind_jax.data import SAMPLE3_DIR
from tests.train.helpers import losses_of, train

REPO3_SFT = SAMPLE3_DIR / "sft.jsonl"

SHAPE = ["--batch_size", "8", "--max_seq_len", "64", "--accumulation_steps", "1"]


def falls(values: list[float], frac: float = 0.9) -> bool:
    """The last quarter's mean is clearly below the first quarter's."""
    q = max(1, len(values) // 4)
    return np.mean(values[-q:]) < frac * np.mean(values[:q])


def test_pretrain_loss_falls(tmp_path, sample_slices):
    rec = train(tmp_path, "pretrain", "--data_path", str(sample_slices["pretrain"]), *SHAPE,
                "--learning_rate", "3e-3", "--epochs", "4")
    assert len(rec) == 16 and falls(losses_of(rec))
    assert {"step", "epoch", "loss", "lr", "tokens_per_s", "ce", "aux_loss"} <= set(rec[0])
    run_dir = tmp_path / "pretrain_64"
    assert (run_dir / "weights.safetensors").exists() and (run_dir / "config.json").exists()
    # the reference's schedule over 16 updates: update 1 already at micro-step 1, the last at exactly lr / 10
    assert rec[0]["lr"] == pytest.approx(3e-3 * (0.1 + 0.45 * (1 + math.cos(math.pi / 16))))
    assert rec[-1]["lr"] == pytest.approx(3e-4)


# LoRA trains rank-8 adapters on two 64x64 projections of a barely pretrained model: its loss falls, but slowly.
@pytest.mark.parametrize("stage,data,lr,epochs,frac", [
    ("full_sft", "sft", "3e-3", 4, 0.9),
    ("lora", "lora_identity", "5e-2", 8, 0.995),
    ("reason", "reason", "3e-3", 8, 0.9),
    ("distillation", "sft", "3e-3", 4, 0.9),
])
def test_sft_family_stage_loss_falls(tmp_path, pretrained, sample_slices, stage, data, lr, epochs, frac):
    out = tmp_path / "out"
    shutil.copytree(pretrained, out)
    extra = ["--from_weight", "full_sft"] if stage != "full_sft" else ["--from_weight", "pretrain"]
    if stage == "distillation":   # the tiny pipeline's teacher is the full_sft model of the same size
        extra += ["--teacher_hidden_size", "64", "--teacher_num_layers", "2"]
    rec = train(out, stage, "--data_path", str(sample_slices[data]), *SHAPE, "--learning_rate", lr,
                "--epochs", str(epochs), *extra)
    assert falls(losses_of(rec), frac), losses_of(rec)
    if stage == "distillation":
        # the teacher is the student's own starting point: KL 0 (to rounding) at step 1, then the student moves away
        assert abs(rec[0]["distill"]) < 1e-6 and rec[-1]["distill"] > 1e-3, losses_of(rec, "distill")


def test_lora_saves_only_the_adapters(tmp_path, pretrained, sample_slices):
    from safetensors.numpy import load_file
    out = tmp_path / "out"
    shutil.copytree(pretrained, out)
    train(out, "lora", "--data_path", str(sample_slices["lora_identity"]), *SHAPE, "--max_steps", "2",
          "--lora_name", "lora_test")
    names = load_file(str(out / "lora_test_64" / "weights.safetensors"))
    assert names and all(".lora." in k for k in names)
    assert all(np.abs(v).max() > 0 for k, v in names.items() if k.endswith("lora.B.weight"))   # B starts at 0


def test_dpo_loss_starts_at_log2_and_falls(tmp_path, pretrained, sample_slices):
    out = tmp_path / "out"
    shutil.copytree(pretrained, out)
    rec = train(out, "dpo", "--data_path", str(sample_slices["dpo"]), "--batch_size", "4", "--max_seq_len", "96",
                "--learning_rate", "5e-3", "--epochs", "4", "--from_weight", "full_sft")
    assert rec[0]["dpo_loss"] == pytest.approx(np.log(2), abs=1e-5)   # the policy starts equal to the reference
    assert falls(losses_of(rec, "dpo_loss"), 0.97) and rec[-1]["reward_margin"] > 0


def test_stage_all_runs_end_to_end(tmp_path):
    from train.run import main
    main(["--stage", "all", "--preset", "tiny", "--max_steps", "2", "--out_dir", str(tmp_path),
          "--batch_size", "4", "--max_seq_len", "64", "--dtype", "float32"])
    for name in ("pretrain", "full_sft", "lora_identity", "full_dist", "dpo", "reason", "reward", "ppo_actor",
                 "grpo", "spo"):
        assert (tmp_path / f"{name}_64" / "weights.safetensors").exists(), name


def test_minimind3_pipeline_runs_end_to_end(tmp_path):
    """`--minimind 3`: the SFT-family pipeline on the embedded generation-3 sample, with its tokenizer, formats and
    model (QK-norm weights under upstream's names in every export)."""
    import json
    from safetensors.numpy import load_file
    from train.run import main
    main(["--stage", "all", "--preset", "tiny", "--minimind", "3", "--max_steps", "2", "--out_dir", str(tmp_path),
          "--batch_size", "4", "--max_seq_len", "96", "--dtype", "float32"])
    for name in ("pretrain", "full_sft", "lora_identity", "full_dist", "dpo"):
        run_dir = tmp_path / f"{name}_64"
        assert json.loads((run_dir / "config.json").read_text())["generation"] == 3, name
        keys = set(load_file(str(run_dir / "weights.safetensors")))
        assert name == "lora_identity" or "model.layers.0.self_attn.q_norm.weight" in keys, name
    assert not (tmp_path / "reason_64").exists()          # no reasoning stage at generation 3


def test_reward_model_trains_saves_and_loads(tmp_path, pretrained, sample_slices):
    import json
    from minimind_jax import MiniMindConfig
    from minimind_jax.heads import load_reward_model
    out = tmp_path / "out"
    shutil.copytree(pretrained, out)
    rec = train(out, "reward", "--data_path", str(sample_slices["dpo"]), "--batch_size", "4", "--max_seq_len", "96",
                "--learning_rate", "1e-3", "--epochs", "6", "--from_weight", "full_sft")
    assert falls(losses_of(rec)) and {"accuracy", "margin"} <= set(rec[0])
    report = json.loads((out / "reward_64" / "eval.json").read_text())
    assert report["heldout_pairs"] == 1 and 0 <= report["heldout_accuracy"] <= 1     # row 9 of 16 is held out
    model, params = load_reward_model(out / "reward_64" / "weights.safetensors", MiniMindConfig.from_preset("tiny"))
    ids = np.array([[1, 5, 9, 2, 0, 0]], np.int32)
    assert np.isfinite(np.asarray(model.apply({"params": params}, ids, (ids != 0).astype(np.int32)))).all()


def test_an_upstream_minimind3_checkpoint_is_fine_tuned_and_exported_under_its_names(tmp_path, shared_path, capsys):
    """Upstream MiniMind-3 weights (its state dict, saved as safetensors) train here with `--minimind 3` and come back
    under exactly upstream's names; MiniMind-2 weights given to a MiniMind-3 run are refused in one line."""
    from safetensors.numpy import load_file, save_file
    from train.run import main
    with np.load(shared_path("minimind3/golden/model_dense.npz")) as z:
        keys = [str(k) for k in z["sd_keys"]]                # lm_head.weight listed, tied to the embedding
        save_file({k: z[f"sd/{k}"] for k in keys if k != "lm_head.weight"}, str(tmp_path / "upstream.safetensors"))
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(open(REPO3_SFT).readlines()[:8]))
    flags = ["--stage", "full_sft", "--minimind", "3", "--preset", "tiny", "--dtype", "float32", "--batch_size", "4",
             "--max_seq_len", "96", "--max_steps", "2", "--data_path", str(data), "--out_dir", str(tmp_path / "out")]
    main([*flags, "--from_weight", str(tmp_path / "upstream.safetensors")])
    exported = load_file(str(tmp_path / "out" / "full_sft_64" / "weights.safetensors"))
    assert set(exported) == set(keys)
    gen2 = tmp_path / "gen2.safetensors"
    save_file({k: v for k, v in exported.items() if "_norm" not in k or "layernorm" in k}, str(gen2))
    with pytest.raises(SystemExit) as e:
        main([*flags, "--from_weight", str(gen2), "--save_weight", "other"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err[-1].startswith("error: --from_weight") and "q_norm" in err[-1]


def test_capacity_routing_reports_what_it_drops(tmp_path, sample_slices):
    """Exact MoE routing logs nothing extra; `--moe_capacity_factor` drops overflowing pairs and says how many."""
    flags = ["--data_path", str(sample_slices["pretrain"]), "--use_moe", "1", "--batch_size", "4",
             "--accumulation_steps", "1", "--max_seq_len", "32", "--max_steps", "2"]
    exact = train(tmp_path / "exact", "pretrain", *flags)
    dropping = train(tmp_path / "capped", "pretrain", *flags, "--moe_capacity_factor", "0.5")
    assert "moe_dropped_frac" not in exact[0]
    assert all(0.3 < r["moe_dropped_frac"] < 1 for r in dropping)     # half of a balanced share: most overflow

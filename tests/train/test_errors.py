"""Mistakes a user can make get one line naming the problem, exit code 2, and no partial output."""
import subprocess
import sys
from types import SimpleNamespace

import pytest

from tests.train.helpers import TINY, train
from train.run import main


def run_cli(*flags, cwd=None):
    p = subprocess.run([sys.executable, "-m", "train.run", *flags], capture_output=True, text=True, cwd=cwd)
    return p.returncode, p.stderr.strip().splitlines()


def test_unknown_stage_is_one_line():
    code, err = run_cli("--stage", "pretrian")
    assert code != 0 and len(err) == 1 and "pretrian" in err[0] and "pretrain" in err[0]


def test_missing_from_weight(tmp_path, sample_slices):
    code, err = run_cli("--stage", "full_sft", "--out_dir", str(tmp_path), *TINY, "--from_weight", "nosuch",
                        "--data_path", str(sample_slices["sft"]))
    assert code == 2 and err[-1].startswith("error: --from_weight nosuch:") and "does not exist" in err[-1]
    assert not (tmp_path / "full_sft_64").exists()


def test_bad_jsonl_line_names_file_and_line(tmp_path, sample_slices):
    bad = tmp_path / "bad.jsonl"
    rows = sample_slices["pretrain"].read_text().splitlines()[:5]
    rows[2] = '{"text": "unterminated'
    bad.write_text("\n".join(rows) + "\n")
    code, err = run_cli("--stage", "pretrain", "--out_dir", str(tmp_path), *TINY, "--data_path", str(bad),
                        "--batch_size", "2", "--max_seq_len", "32")
    assert code == 2 and f"{bad}:3" in err[-1]
    assert not (tmp_path / "pretrain_64").exists()


def test_bad_mesh_flag(tmp_path, sample_slices):
    code, err = run_cli("--stage", "pretrain", "--out_dir", str(tmp_path), *TINY, "--mesh", "data=3",
                        "--data_path", str(sample_slices["pretrain"]))
    assert code == 2 and "--mesh" in err[-1]


def test_tokenizer_larger_than_the_model_vocab(monkeypatch):
    from minimind_jax.tokenizer import Tokenizer
    from train.args import parser
    from train.engine import build_run
    from train.errors import UsageError
    from train.run import config_of
    monkeypatch.setattr(Tokenizer, "load", classmethod(lambda cls, path=None: SimpleNamespace(vocab_size=7000, generation=2)))
    stage, config = config_of(parser().parse_args(["--stage", "pretrain", *TINY]))
    with pytest.raises(UsageError, match="7000 ids but the model's vocab_size is 6400"):
        build_run(stage, config)


@pytest.mark.parametrize("flags,message", [(["--lora_rank", "4"], "has rank 8, the run's --lora_rank is 4"),
                                           (["--num_hidden_layers", "3"], "missing LoRA tensor model.layers.2"),
                                           (["--hidden_size", "128"], "do not fit a (128, 128) weight")])
def test_lora_init_that_does_not_fit(tmp_path, sample_slices, shared_path, capsys, flags, message):
    adapters = shared_path("golden/trajectory/lora_init.safetensors")
    with pytest.raises(SystemExit) as exit:
        main(["--stage", "lora", "--out_dir", str(tmp_path), *TINY, "--from_weight", "none", "--lora_init",
              str(adapters), "--data_path", str(sample_slices["lora_identity"]), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit.value.code == 2 and len(err) == 1 and err[0].startswith(f"error: --lora_init {adapters}:")
    assert message in err[0]
    assert not any(tmp_path.iterdir())

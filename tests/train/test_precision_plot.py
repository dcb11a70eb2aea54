"""The engine under each precision policy, and the metrics plot."""
import numpy as np
import pytest

from tests.train.helpers import losses_of, train
from train.metrics import read
from train.run import main

SHAPE = ["--batch_size", "4", "--accumulation_steps", "1", "--max_seq_len", "48", "--learning_rate", "3e-3",
         "--max_steps", "4"]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_pretrain_under_reduced_precision(tmp_path, sample_slices, dtype):
    rec = train(tmp_path, "pretrain", "--data_path", str(sample_slices["pretrain"]), *SHAPE, "--dtype", dtype)
    assert len(rec) == 4 and np.isfinite(losses_of(rec)).all()
    f32 = train(tmp_path / "f32", "pretrain", "--data_path", str(sample_slices["pretrain"]), *SHAPE)
    # The first step's loss is the same model on the same batch: reduced precision only rounds it.
    assert rec[0]["loss"] == pytest.approx(f32[0]["loss"], rel=2e-2)
    if dtype == "float16":
        assert rec[-1]["loss_scale"] > 0


def test_plot_writes_a_png(tmp_path, sample_slices):
    pytest.importorskip("matplotlib")
    from train.plot import plot
    train(tmp_path, "pretrain", "--data_path", str(sample_slices["pretrain"]), *SHAPE)
    png = plot(tmp_path / "pretrain_64")
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

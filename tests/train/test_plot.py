"""train.plot on synthetic metrics.jsonl files: which panels a run gets, non-finite values, the PNG, the errors."""
import json
import math
import subprocess
import sys

import pytest

from train.plot import constants, epoch_starts, main, panels, plot, read_records, series

PNG = b"\x89PNG\r\n\x1a\n"


def write(run_dir, records, raw_lines=()):
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in records] + list(raw_lines)
    (run_dir / "metrics.jsonl").write_text("".join(l + "\n" for l in lines))
    return run_dir


def grpo_records(n=6):
    """What a short GRPO run logs: the total equals the policy loss, aux is 0, lengths are pinned at the cap."""
    out = []
    for s in range(1, n + 1):
        pl = 0.1 / s
        out.append({"step": s, "epoch": 0, "advantage_mean": 0.0, "advantage_std": 0.5 + s, "aux_loss": 0.0,
                    "completion_len": 16.0, "response_len": 16.0, "completion_tokens": 64, "grad_norm": 1.0 / s,
                    "kl": 0.01 * s, "loss": pl, "policy_loss": pl, "reward": 0.2 * s, "reward_answer": 0.1 * s,
                    "reward_format": 0.3, "rollout_s": 2.0 / s, "reward_s": 1e-3 * s, "logps_s": 0.5 / s,
                    "update_s": 0.1 * s + 0.05, "lr": 1e-6 * (1 - s / 100), "tokens_per_s": 100.0 * s,
                    "time": 1.7e9 + s})
    return out


def by_title(ps):
    return {p.title: p for p in ps}


def test_grpo_run_fits_in_few_panels():
    ps = by_title(panels(grpo_records()))
    assert list(ps) == ["loss = policy_loss", "reward", "kl", "advantage_std",
                        "seconds per step", "grad_norm", "lr", "tokens_per_s"]
    assert ps["loss = policy_loss"].names == ("loss", "policy_loss")
    # reward_format is constant: it goes to the note, its moving siblings share the reward panel.
    assert ps["reward"].names == ("reward", "reward_answer")
    assert ps["seconds per step"].names == ("rollout_s", "reward_s", "logps_s", "update_s")
    named = {n for p in ps.values() for n in p.names}
    assert not named & {"step", "epoch", "time", "aux_loss", "advantage_mean", "completion_len", "response_len",
                        "completion_tokens", "reward_format"}


def test_constants_are_listed_not_drawn():
    assert constants(grpo_records()) == {"advantage_mean": 0.0, "aux_loss": 0.0, "completion_len": 16.0,
                                         "response_len": 16.0, "completion_tokens": 64.0, "reward_format": 0.3}


def test_equal_series_share_one_line_named_after_both():
    recs = [{"step": s, "epoch": 0, "loss": 5.0 - s, "ce": 5.0 - s, "aux_loss": 0.0} for s in range(1, 40)]
    (p,) = panels(recs)
    assert p.title == "loss = ce" and len(p.lines) == 1 and p.lines[0].names == ("loss", "ce")


def test_moe_run_keeps_ce_and_aux_apart_from_an_unequal_loss():
    recs = [{"step": s, "loss": 5.0 - s + 0.01 * s, "ce": 5.0 - s, "aux_loss": 0.01 * s} for s in range(1, 20)]
    ps = by_title(panels(recs))
    assert ps["loss"].names == ("loss", "ce") and len(ps["loss"].lines) == 2
    assert ps["aux_loss"].names == ("aux_loss",)


def test_dpo_reward_metrics_group_as_chosen_vs_rejected():
    recs = [{"step": s, "loss": 0.69 - 0.01 * s, "chosen_reward": 0.1 * s, "rejected_reward": -0.1 * s,
             "reward_margin": 0.2 * s, "reward_accuracy": 0.05 * s} for s in range(1, 11)]
    ps = by_title(panels(recs))
    # Without a "reward" key, reward_* are not reward components.
    assert "reward" not in ps
    assert ps["chosen vs rejected"].names == ("chosen_reward", "rejected_reward", "reward_margin")
    assert ps["reward_accuracy"].names == ("reward_accuracy",)


def test_few_points_get_markers_many_do_not():
    few = panels([{"step": 1, "loss": 2.0}])
    many = panels([{"step": s, "loss": 1.0 / s} for s in range(1, 500)])
    assert few[0].markers and few[0].points == 1
    assert not many[0].markers


def test_log_scale_only_for_positive_series_spanning_decades():
    recs = [{"step": s, "lr": 10.0 ** -s, "loss_scale": 2.0 ** (16 - s), "loss": 3.0 - 0.1 * s,
             "margin": 10.0 ** -s - 0.5} for s in range(1, 12)]
    ps = by_title(panels(recs))
    assert ps["lr"].log and ps["loss_scale"].log
    assert not ps["loss"].log and not ps["margin"].log


def test_one_tiny_value_does_not_make_a_noisy_series_log_scale():
    vals = [0.5, 0.9, 0.2, 0.7, 1e-4, 0.4, 0.8, 0.3, 0.6, 0.95, 0.25] + [(7 * k % 101) / 101 for k in range(300)]
    (p,) = panels([{"step": s, "clip_frac": v} for s, v in enumerate(vals, 1)])
    assert not p.log


def test_a_one_record_run_draws_every_series():
    ps = panels([{"step": 1, "epoch": 0, "loss": 8.7, "ce": 8.7, "lr": 5e-4}])
    assert [p.title for p in ps] == ["loss = ce", "lr"] and all(p.markers for p in ps)


def test_non_finite_values_are_read_and_never_constant(tmp_path):
    write(tmp_path, [{"step": 1, "loss": 2.0, "gn": 1.0}, {"step": 2, "loss": "nan", "gn": 1.0},
                     {"step": 3, "loss": None, "gn": "inf"}, {"step": 4, "loss": "-inf", "gn": 1.0}],
          raw_lines=['{"step": 5, "loss": NaN, "gn": Infinity}', '{"step": 6, "lo'])   # killed mid-write
    recs = read_records(tmp_path / "metrics.jsonl")
    assert len(recs) == 5
    loss = series(recs)["loss"]
    assert loss[0] == (1.0, 2.0) and all(math.isnan(v) for _, v in (loss[1], loss[2], loss[4]))
    assert loss[3][1] == -math.inf
    # gn is 1.0 wherever it is finite, but its infinities are the news: it keeps its panel.
    assert [p.title for p in panels(recs)] == ["loss", "gn"]
    assert constants(recs) == {}
    png = plot(tmp_path)
    assert png.read_bytes()[:8] == PNG


def test_strings_that_are_no_number_are_not_series():
    recs = [{"step": s, "stage": "grpo", "flag": True, "loss": 1.0 / s} for s in range(1, 4)]
    assert list(series(recs)) == ["loss"]


def test_epoch_boundaries():
    recs = [{"step": s, "epoch": (s - 1) // 5, "loss": 1.0 / s} for s in range(1, 16)]
    assert epoch_starts(recs) == [6.0, 11.0]
    assert epoch_starts(recs[:5]) == []


def test_png_written_for_every_kind_of_run(tmp_path):
    runs = {"grpo": grpo_records(),
            "one_point": [{"step": 1, "epoch": 0, "loss": 3.0, "lr": 1e-3}],
            "all_constant": [{"step": s, "aux_loss": 0.0} for s in range(1, 4)],
            "all_null": [{"step": s, "loss": None, "lr": 1e-3 * s} for s in range(1, 4)],
            "epochs": [{"step": s, "epoch": (s - 1) // 10, "loss": 1.0 / s} for s in range(1, 31)]}
    for name, recs in runs.items():
        png = plot(write(tmp_path / name, recs), tmp_path / f"{name}.png")
        assert png == tmp_path / f"{name}.png" and png.read_bytes()[:8] == PNG


def test_default_output_is_next_to_the_metrics(tmp_path, capsys):
    write(tmp_path, grpo_records(3))
    main([str(tmp_path)])
    assert capsys.readouterr().out.strip() == str(tmp_path / "metrics.png")
    assert (tmp_path / "metrics.png").read_bytes()[:8] == PNG


def one_line_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.endswith("\n") and err.count("\n") == 1
    return err


def test_missing_metrics_file_is_one_line_exit_2(tmp_path, capsys):
    assert "no metrics.jsonl" in one_line_exit_2([str(tmp_path)], capsys)


def test_empty_metrics_file_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text("\n\n")
    assert "empty" in one_line_exit_2([str(tmp_path)], capsys)


def test_missing_matplotlib_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    write(tmp_path, grpo_records(2))
    monkeypatch.setitem(sys.modules, "matplotlib", None)      # makes `import matplotlib` raise ImportError
    assert "needs matplotlib" in one_line_exit_2([str(tmp_path)], capsys)
    assert not (tmp_path / "metrics.png").exists()


def test_command_line(tmp_path):
    """The module runs as `python -m train.plot` and fails with status 2, one line, no traceback."""
    r = subprocess.run([sys.executable, "-m", "train.plot", str(tmp_path / "nowhere")], capture_output=True,
                       text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr

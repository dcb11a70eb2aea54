"""The adversarial table: bad flags, bad data, bad weights, refused resumes, faults and attacks against
`python -m train.run` and the chat CLI, each with what must happen.

    python -m tests.faults            # every case; prints held/total per category (a few minutes on 2 cores)
    python -m tests.faults --fast     # the cases CI runs (tests/train/test_faults.py runs them as tests)

A case holds when the command ends with the promised exit code, its last stderr line says what and where (a regex),
no traceback is printed, and the files it must not touch (the base run's weights and checkpoints, unless the case
is about replacing them) are byte-identical afterwards. Fast cases run the CLI's `main` in this process (compiled
programs are shared); the others need their own processes (signals, locks held by another process, a missing peer).
"""
import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
BASE_FLAGS = ["--preset", "tiny", "--dtype", "float32", "--batch_size", "4", "--accumulation_steps", "1",
              "--max_seq_len", "32", "--log_interval", "100", "--save_interval", "2", "--epochs", "1"]
RUN = "pretrain_64"         # the base run's directory under out/


@dataclasses.dataclass
class Case:
    name: str
    category: str
    argv: Callable[[Path], list[str]]          # work dir -> the command's flags (after `python -m train.run`)
    code: int = 2
    message: str = ""                          # regex the last stderr line must match
    prepare: Callable[[Path], None] | None = None   # damage something in the work dir first
    patch: Callable | None = None              # in-process: a context manager that injects a fault
    check: Callable[[Path, str], None] | None = None   # more assertions (work dir, stderr)
    touches: tuple[str, ...] = ()              # paths under out/RUN the case may change (else all must stay)
    process: bool = False                      # needs its own process
    cli: str = "train.run"
    fast: bool = True


# ---- the base run every case starts from ---------------------------------------------------------------------------

def head(src: Path, dst: Path, n: int) -> Path:
    dst.write_text("".join(src.read_text().splitlines(keepends=True)[:n]))
    return dst


def make_base(work: Path) -> Path:
    """out/pretrain_64: a tiny pretrain of 4 steps with checkpoints at steps 2 and 4 and exported weights."""
    work.mkdir(parents=True, exist_ok=True)
    data = head(SAMPLE / "pretrain.jsonl", work / "pretrain.jsonl", 16)
    head(SAMPLE / "pretrain.jsonl", work / "other.jsonl", 20)
    rlaif = head(SAMPLE / "rlaif.jsonl", work / "rlaif.jsonl", 8)
    head(SAMPLE / "sft.jsonl", work / "sft.jsonl", 8)
    _main(["--stage", "pretrain", "--out_dir", str(work / "out"), "--data_path", str(data),
           "--cache_dir", str(work / "cache"), *BASE_FLAGS])
    assert rlaif.exists()
    return work


def base_argv(work: Path, *flags: str, stage: str = "pretrain") -> list[str]:
    return ["--stage", stage, "--out_dir", str(work / "out"), "--data_path", str(work / "pretrain.jsonl"),
            "--cache_dir", str(work / "cache"), *BASE_FLAGS, *flags]


def snapshot(run_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != ".lock"}


# ---- damage --------------------------------------------------------------------------------------------------------

def newest_checkpoint(work: Path) -> Path:
    ckpt = work / "out" / RUN / "checkpoints"
    return ckpt / str(max(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()))


def truncate_a_data_file(work: Path) -> None:
    files = [p for p in (newest_checkpoint(work) / "state").rglob("*") if p.is_file() and p.stat().st_size > 64]
    target = max(files, key=lambda p: p.stat().st_size)
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 3])


def empty_the_metadata(work: Path) -> None:
    for p in newest_checkpoint(work).rglob("*"):
        if p.is_file() and "meta" in p.name.lower():
            p.write_bytes(b"")


def damage_every_checkpoint(work: Path) -> None:
    ckpt = work / "out" / RUN / "checkpoints"
    for step in (p for p in ckpt.iterdir() if p.name.isdigit()):
        for p in step.rglob("*"):
            if p.is_file():
                p.write_bytes(b"")


def truncated_weights(work: Path) -> None:
    w = work / "out" / RUN / "weights.safetensors"
    bad = work / "bad.safetensors"
    bad.write_bytes(w.read_bytes()[: w.stat().st_size // 2])


def lonely_weights(work: Path) -> None:
    """The run's weights without the config.json beside them: only the flags say what model they are for."""
    shutil.copy(work / "out" / RUN / "weights.safetensors", work / "lonely.safetensors")


def damage_the_cache(work: Path) -> None:
    for ids in (work / "cache").rglob("ids.bin"):
        ids.write_bytes(ids.read_bytes()[:7])


def write(name: str, text: str | bytes) -> Callable[[Path], None]:
    def prepare(work: Path) -> None:
        (work / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return prepare


# ---- in-process faults ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def nan_loss():
    """Every step's loss is NaN (as a diverged model's would be)."""
    import jax.numpy as jnp
    import losses
    real = losses.masked_ce
    losses.masked_ce = lambda *a, **k: real(*a, **k) * jnp.nan
    try:
        yield
    finally:
        losses.masked_ce = real


@contextlib.contextmanager
def disk_full():
    """Every checkpoint write fails as a full disk would, after Orbax has started writing."""
    import errno
    import orbax.checkpoint as ocp
    real = ocp.CheckpointManager.save

    def save(self, step, *a, **k):
        tmp = Path(self.directory) / f"{step}.orbax-checkpoint-tmp-0"
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "partial").write_bytes(b"x" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")
    ocp.CheckpointManager.save = save
    try:
        yield
    finally:
        ocp.CheckpointManager.save = real


@contextlib.contextmanager
def unreadable_data():
    """Reading the data file is refused (root ignores file modes, so the refusal is injected)."""
    from minimind_jax.data import cache
    real = cache.file_digest

    def digest(path):
        raise PermissionError(13, "Permission denied", str(path))
    cache.file_digest = digest
    try:
        yield
    finally:
        cache.file_digest = real


@contextlib.contextmanager
def no_torch():
    saved = sys.modules.get("torch")
    sys.modules["torch"] = None          # `import torch` raises ImportError
    try:
        yield
    finally:
        if saved is None:
            sys.modules.pop("torch", None)
        else:
            sys.modules["torch"] = saved


@contextlib.contextmanager
def run_lock_held(work: Path):
    from train.lock import RunLock
    with RunLock(work / "out" / RUN):
        yield


# ---- checks --------------------------------------------------------------------------------------------------------

def skipped_the_newest(work: Path, err: str) -> None:
    """Step 4 was skipped (and kept aside), the run went on from step 2 to its end (8 steps in 2 epochs)."""
    assert "skipped checkpoint 4" in err, err
    assert [p.name.split(".")[0] for p in (work / "out" / RUN / "checkpoints.damaged").iterdir()] == ["4"]
    metrics = [json.loads(l) for l in (work / "out" / RUN / "metrics.jsonl").read_text().splitlines()]
    assert metrics and metrics[-1]["step"] == 8, metrics[-1:]


def last_good_weights_saved(work: Path, err: str) -> None:
    ckpt = work / "out" / RUN / "checkpoints"
    steps = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
    assert 2 in steps and 4 in steps, steps        # the base run's good checkpoints survive the new saves
    metrics = (work / "out" / RUN / "metrics.jsonl").read_text()
    assert '"nan"' in metrics and "null" not in metrics, metrics[-300:]


def cache_rebuilt(work: Path, err: str) -> None:
    assert "damaged" in err and "rebuilding" in err, err


def no_temporaries(work: Path, err: str) -> None:
    left = [p for p in (work / "out" / RUN / "checkpoints").iterdir() if "tmp" in p.name]
    assert not left, left


def trained_weights_kept(work: Path, err: str) -> None:
    assert (work / "out" / RUN / "weights.safetensors").exists()


# ---- the table -----------------------------------------------------------------------------------------------------

def cases() -> list[Case]:
    b = base_argv
    resume = lambda *f: (lambda w: b(w, "--epochs", "2", "--from_resume", "1", *f))
    C = Case
    return [
        # flags: refused before any data is read, one line naming the flag
        C("learning rate NaN", "flags", lambda w: b(w, "--learning_rate", "nan"), message=r"--learning_rate nan"),
        C("negative learning rate", "flags", lambda w: b(w, "--learning_rate", "-1"), message=r"--learning_rate -1"),
        C("batch size 0", "flags", lambda w: b(w, "--batch_size", "0"), message=r"--batch_size 0"),
        C("accumulation 0", "flags", lambda w: b(w, "--accumulation_steps", "0"), message=r"--accumulation_steps 0"),
        C("max_seq_len 1", "flags", lambda w: b(w, "--max_seq_len", "1"), message=r"--max_seq_len 1"),
        C("save_interval 0", "flags", lambda w: b(w, "--save_interval", "0"), message=r"--save_interval 0"),
        C("epochs 0 over trained weights", "flags", lambda w: b(w, "--epochs", "0", "--overwrite"),
          message=r"--epochs 0", check=trained_weights_kept),
        C("hidden size not divisible by the heads", "flags", lambda w: b(w, "--hidden_size", "66"),
          message=r"hidden_size 66"),
        C("dtype typo", "flags", lambda w: b(w, "--dtype", "fp64"), message=r"--dtype"),
        C("stage typo", "flags", lambda w: ["--stage", "pretrian"], message=r"pretrian"),
        C("mesh larger than the devices", "flags", lambda w: b(w, "--mesh", "data=3"), message=r"--mesh"),
        C("negative grad_clip", "flags", lambda w: b(w, "--grad_clip", "-1"), message=r"--grad_clip -1"),
        C("unknown --resume_accept", "flags", lambda w: b(w, "--from_resume", "1", "--resume_accept", "model"),
          message=r"--resume_accept model"),
        C("--overwrite with --from_resume", "flags", lambda w: b(w, "--from_resume", "1", "--overwrite"),
          message=r"--overwrite with --from_resume"),
        C("top_p 0", "flags", lambda w: b(w, "--rollout_top_p", "0", stage="grpo"), message=r"--rollout_top_p 0"),
        # data
        C("missing data file", "data", lambda w: b(w, "--data_path", str(w / "nope.jsonl"), "--overwrite"),
          message=r"nope\.jsonl.*no such file"),
        C("a directory as data", "data", lambda w: b(w, "--data_path", str(w), "--overwrite"),
          message=r"is a directory"),
        C("unreadable data file", "data", lambda w: b(w, "--overwrite"), patch=lambda w: unreadable_data(),
          message=r"--data_path .*Permission denied"),
        C("malformed line", "data", lambda w: b(w, "--data_path", str(w / "bad.jsonl"), "--overwrite"),
          prepare=write("bad.jsonl", '{"text": "a"}\n{"text": "unterminated\n'), message=r"bad\.jsonl:2"),
        C("empty data file", "data", lambda w: b(w, "--data_path", str(w / "empty.jsonl"), "--overwrite"),
          prepare=write("empty.jsonl", ""), message=r"empty\.jsonl"),
        C("not UTF-8", "data", lambda w: b(w, "--data_path", str(w / "latin.jsonl"), "--overwrite"),
          prepare=write("latin.jsonl", b'{"text": "caf\xe9"}\n'), message=r"latin\.jsonl:1"),
        C("damaged token cache is rebuilt", "data", lambda w: b(w, "--overwrite", "--save_interval", "100"),
          code=0, prepare=damage_the_cache, check=cache_rebuilt, touches=("*",)),
        # weights
        C("weights of another size", "weights",
          lambda w: b(w, "--hidden_size", "128", "--from_weight", str(w / "out" / RUN / "weights.safetensors")),
          message=r"--from_weight .*weights\.safetensors"),
        C("truncated safetensors", "weights", lambda w: b(w, "--from_weight", str(w / "bad.safetensors"),
                                                          "--save_weight", "x"),
          prepare=truncated_weights, message=r"--from_weight .*bad\.safetensors"),
        C(".pth without torch", "weights", lambda w: b(w, "--from_weight", str(w / "model.pth"), "--save_weight", "x"),
          prepare=write("model.pth", b"\x80\x02}q\x00."), patch=lambda w: no_torch(), message=r"needs torch"),
        C("missing weights name", "weights", lambda w: b(w, "--from_weight", "nosuch", "--save_weight", "x"),
          message=r"--from_weight nosuch: .*does not exist"),
        C("tokenizer directory missing", "weights", lambda w: b(w, "--tokenizer", str(w / "notok"),
                                                                "--save_weight", "x"), message=r"--tokenizer"),
        # resume: the same run or a clear refusal
        C("resume with a changed learning rate", "resume", resume("--learning_rate", "1e-3"),
          message=r"learning_rate 0\.0005 -> 0\.001.*: accept with --resume_accept learning_rate"),
        C("changed learning rate, accepted", "resume", resume("--learning_rate", "1e-3", "--resume_accept",
                                                              "learning_rate,epochs"), code=0, touches=("*",)),
        C("resume with another seed", "resume", resume("--seed", "7"), message=r"seed 42 -> 7"),
        C("resume on other data", "resume", resume("--data_path", "OTHER"), message=r"data "),
        C("resume as another stage", "resume", lambda w: base_argv(w, "--from_resume", "1", "--save_weight",
                                                                   "pretrain", "--data_path", str(w / "sft.jsonl"),
                                                                   stage="full_sft"),
          message=r"stage pretrain -> full_sft"),
        C("resume with another architecture", "resume", resume("--num_hidden_layers", "3"),
          message=r"model \(num_hidden_layers 2 -> 3"),
        C("newest checkpoint cut short", "resume", resume("--resume_accept", "epochs"), code=0,
          prepare=truncate_a_data_file, check=skipped_the_newest, touches=("*",)),
        C("newest checkpoint's metadata emptied", "resume", resume("--resume_accept", "epochs"), code=0,
          prepare=empty_the_metadata, check=skipped_the_newest, touches=("*",)),
        C("every checkpoint damaged", "resume", resume("--resume_accept", "epochs"), prepare=damage_every_checkpoint,
          message=r"no checkpoint in .* restores whole", touches=("checkpoints",)),
        C("fresh run over checkpoints", "resume", lambda w: b(w), message=r"--from_resume 1.*--overwrite"),
        C("nothing to do keeps the weights", "resume", lambda w: b(w, "--from_resume", "1"), code=0),
        # faults during the run
        C("loss goes NaN: stop, last good weights kept", "faults",
          lambda w: b(w, "--from_resume", "1", "--epochs", "3", "--resume_accept", "epochs", "--save_interval", "1",
                      "--log_interval", "1"),
          patch=lambda w: nan_loss(), message=r"not finite for 3 steps in a row", check=last_good_weights_saved,
          touches=("*",)),
        C("disk full during a save", "faults", lambda w: b(w, "--from_resume", "1", "--epochs", "2", "--resume_accept",
                                                           "epochs"),
          patch=lambda w: disk_full(), message=r"could not write the checkpoint .*No space left", check=no_temporaries,
          touches=("metrics.jsonl",)),
        C("run directory locked by another run", "faults", lambda w: b(w, "--from_resume", "1"),
          patch=run_lock_held, message=r"in use by another run \(pid \d+"),
        C("SIGTERM: checkpoint, then exact resume", "faults", lambda w: b(w, "--from_resume", "1", "--epochs", "40",
                                                                          "--resume_accept", "epochs"),
          process=True, code=128 + signal.SIGTERM, message=r"SIGTERM at step \d+: checkpoint saved",
          touches=("*",), fast=False),
        C("second concurrent run", "faults", lambda w: b(w, "--from_resume", "1", "--epochs", "40",
                                                         "--resume_accept", "epochs"),
          process=True, message=r"in use by another run", touches=("*",), fast=False),
        C("peer process never appears", "multihost",
          lambda w: ["--stage", "pretrain", "--coordinator_address", "127.0.0.1:1", "--num_processes", "2",
                     "--process_id", "1", "--distributed_timeout", "3", "--out_dir", str(w / "out2")],
          process=True, message=r"--coordinator_address 127\.0\.0\.1:1: .*did not all join within 3 s", fast=False),
        # user code
        C("--reward_fn from the current directory is not imported", "security",
          lambda w: b(w, "--reward_fn", "evil_rewards:score", "--reasoning", "0", stage="grpo",
                      ) + ["--data_path", str(w / "rlaif.jsonl"), "--from_weight", "none", "--save_weight", "g"],
          prepare=write("evil_rewards.py", "raise SystemExit('imported')\n"), message=r"--reward_fn evil_rewards:score",
          process=True),
        C("--reward_fn missing", "security", lambda w: b(w, "--reward_fn", "no_such_module:f", stage="grpo"),
          message=r"--reward_fn no_such_module:f: cannot import"),
        # the chat CLI
        C("chat: truncated weights", "chat", lambda w: ["--weight", str(w / "bad.safetensors"), "--preset", "tiny",
                                                        "--prompt", "hi"],
          prepare=truncated_weights, cli="minimind_jax.chat", message=r"bad\.safetensors"),
        C("chat: missing weights", "chat", lambda w: ["--weight", "nosuch", "--out_dir", str(w / "out"),
                                                      "--preset", "tiny", "--prompt", "hi"],
          cli="minimind_jax.chat", message=r"nosuch"),
        C("chat: weights of another size", "chat",
          lambda w: ["--weight", str(w / "lonely.safetensors"), "--preset", "tiny", "--hidden_size", "128",
                     "--prompt", "hi"], prepare=lonely_weights, cli="minimind_jax.chat", message=r"lonely\.safetensors"),
    ]


# ---- running a case ------------------------------------------------------------------------------------------------

def _main(argv: list[str], cli: str = "train.run") -> int:
    module = __import__(cli, fromlist=["main"])
    try:
        result = module.main(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return result if isinstance(result, int) else 0


def _fill(argv: list[str], work: Path) -> list[str]:
    return [str(work / "other.jsonl") if a == "OTHER" else a for a in argv]


def run_case(case: Case, base: Path, scratch: Path) -> tuple[bool, str]:
    """(held, what happened)."""
    work = scratch / re.sub(r"\W+", "_", case.name)
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(base, work)
    if case.prepare:
        case.prepare(work)
    run_dir = work / "out" / RUN
    before = snapshot(run_dir)
    argv = _fill(case.argv(work), work)
    if case.process:
        code, err = _run_process(case, argv, work)
    else:
        buf = io.StringIO()
        with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(io.StringIO()), \
                (case.patch(work) if case.patch else contextlib.nullcontext()):
            code = _main(argv, case.cli)
        err = buf.getvalue()
    lines = [l for l in err.strip().splitlines() if l.strip()]
    last = lines[-1] if lines else ""
    problems = []
    if code != case.code:
        problems.append(f"exit {code}, expected {case.code}")
    if case.code == 2 and not (last.startswith("error:") and re.search(case.message, last)):
        problems.append(f"last line {last[:200]!r} does not match {case.message!r}")
    if case.code not in (0, 2) and case.message and not re.search(case.message, err):
        problems.append(f"no line matches {case.message!r}")
    if "Traceback" in err:
        problems.append("a traceback was printed")
    after = snapshot(run_dir) if run_dir.exists() else {}
    if "*" not in case.touches:
        changed = [k for k in before if after.get(k) != before[k] and not k.startswith(case.touches or ("\0",))]
        if changed:
            problems.append(f"changed or removed: {changed[:3]}")
    if case.check and not problems:
        try:
            case.check(work, err)
        except AssertionError as e:
            problems.append(f"check failed: {str(e)[:200]}")
    return not problems, "; ".join(problems) or last[:160]


def _run_process(case: Case, argv: list[str], work: Path) -> tuple[int, str]:
    cmd = [sys.executable, "-m", case.cli, *argv]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    if case.name.startswith("SIGTERM"):
        return _sigterm_then_resume(cmd, env, work)
    if case.name.startswith("second concurrent"):
        first = subprocess.Popen(cmd, env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_for(lambda: (work / "out" / RUN / ".lock").exists(), 120)
            p = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True, timeout=300)
        finally:
            first.send_signal(signal.SIGTERM)
            first.wait(timeout=300)
        return p.returncode, p.stderr
    p = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True, timeout=300)
    return p.returncode, p.stderr


def _wait_for(cond, seconds: float) -> None:
    t0 = time.time()
    while not cond():
        if time.time() - t0 > seconds:
            raise TimeoutError("the first run never started")
        time.sleep(0.2)


def _sigterm_then_resume(cmd, env, work: Path) -> tuple[int, str]:
    """SIGTERM once the run is stepping; the resumed run must then log what an unbroken one logs."""
    metrics = work / "out" / RUN / "metrics.jsonl"
    cmd = [*cmd, "--log_interval", "1"]
    p = subprocess.Popen(cmd, env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, 300)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=300)
    if p.returncode != 128 + signal.SIGTERM:
        return p.returncode, err
    stopped = json.loads(metrics.read_text().splitlines()[-1])["step"]
    resumed = subprocess.run([*cmd, "--max_steps", str(stopped + 3)], env=env, cwd=work, capture_output=True,
                             text=True, timeout=300)
    if resumed.returncode:
        return resumed.returncode, resumed.stderr
    # the same steps from the base run's checkpoint, never stopped
    ref = work / "ref"
    shutil.copytree(work / "out", ref, ignore=shutil.ignore_patterns("metrics.jsonl", ".lock"))
    shutil.rmtree(ref / RUN / "checkpoints")
    shutil.copytree(work.parent / "base" / "out" / RUN / "checkpoints", ref / RUN / "checkpoints")
    unbroken = subprocess.run([*[a if a != str(work / "out") else str(ref) for a in cmd],
                               "--max_steps", str(stopped + 3)], env=env, cwd=work, capture_output=True, text=True,
                              timeout=300)
    got = {r["step"]: r["loss"] for r in map(json.loads, metrics.read_text().splitlines()) if "loss" in r}
    want = {r["step"]: r["loss"] for r in map(json.loads, (ref / RUN / "metrics.jsonl").read_text().splitlines())
            if "loss" in r}
    if unbroken.returncode or any(abs(got.get(k, 1e9) - v) > 1e-6 for k, v in want.items()):
        return 1, f"resumed losses {got} differ from an unbroken run's {want}"
    return p.returncode, err


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fast", action="store_true", help="only the cases CI runs")
    ap.add_argument("--work", type=Path, default=Path("/tmp/minimind_faults"))
    ap.add_argument("-k", default="", help="only cases whose name contains this")
    a = ap.parse_args(argv)
    shutil.rmtree(a.work, ignore_errors=True)
    base = make_base(a.work / "base")
    results = {}
    for case in cases():
        if (a.fast and not case.fast) or a.k not in case.name:
            continue
        held, what = run_case(case, base, a.work)
        results.setdefault(case.category, []).append((case.name, held, what))
        print(f"{'held  ' if held else 'FAILED'} [{case.category}] {case.name}: {what}", flush=True)
    print(f"\n{'category':<12} held/total")
    for category, rows in results.items():
        print(f"{category:<12} {sum(h for _, h, _ in rows)}/{len(rows)}")
    total = [h for rows in results.values() for _, h, _ in rows]
    print(f"{'all':<12} {sum(total)}/{len(total)}")
    return 0 if all(total) else 1


if __name__ == "__main__":
    sys.exit(main())

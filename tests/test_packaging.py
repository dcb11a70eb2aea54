"""What a `pip install` of the wheel gets: the model library, losses and trainer with their package data (the chat
page, the embedded evaluation set) and the shipped data (sample sets, tokenizers) that `minimind_jax.paths.shipped`
finds under the installed prefix — and not the benchmarks, experiments or tests."""
import subprocess
import sys
import zipfile

from tests.helpers import REPO


def test_the_wheel_ships_the_data_and_only_the_packages(tmp_path):
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(REPO),
                        "-w", str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    (wheel,) = tmp_path.glob("minimind_jax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    share = [n.split("/data/share/minimind_jax/", 1)[1] for n in names if "/data/share/minimind_jax/" in n]
    for needed in ("sample/pretrain.jsonl", "sample/tokenizer/tokenizer.model", "sample3/sft.jsonl",
                   "sample3/tokenizer/tokenizer.json", "minimind_tokenizer/tokenizer.json"):
        assert needed in share, needed
    assert "minimind_jax/static/chat.html" in names and "minimind_jax/evalsets/sample_mc.jsonl" in names
    tops = {n.split("/", 1)[0] for n in names if not n.startswith("minimind_jax-")}
    assert tops == {"minimind_jax", "losses", "train"}, tops

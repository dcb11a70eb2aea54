"""Where a run's weights live: the reference's naming, `<out_dir>/<name>_<hidden>[_moe]/weights.safetensors`.

The trainer writes there and everything that reads weights (the next stage, chat, export, serve) finds them the
same way, from a stage name, a run directory or a file.
"""
import sys
from pathlib import Path

from minimind_jax.config import MiniMindConfig

WEIGHTS_FILE = "weights.safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def weight_dir(out_dir, name: str, cfg: MiniMindConfig) -> Path:
    """The reference's naming, `{name}_{hidden}[_moe]`, as a directory."""
    return Path(out_dir) / f"{name}_{cfg.hidden_size}{'_moe' if cfg.use_moe else ''}"


def resolve_weights(name: str, out_dir, cfg: MiniMindConfig, flag: str = "--from_weight") -> Path:
    """NAME -> <out_dir>/NAME_<hidden>[_moe]/weights.safetensors; a weights file or a run directory as given.
    FileNotFoundError (its text one line naming the flag and what was tried) when there is nothing."""
    path = Path(name)
    if path.suffix in WEIGHT_SUFFIXES:
        candidate = path
    elif path.is_dir():
        candidate = path / WEIGHTS_FILE
    else:
        candidate = weight_dir(out_dir, name, cfg) / WEIGHTS_FILE
    if not candidate.is_file():
        raise FileNotFoundError(f"{flag} {name}: {candidate} does not exist (train that stage first, or pass a path)")
    return candidate


def shipped(name: str) -> Path:
    """A directory of the data that ships with the project (`data/<name>`: the sample sets and tokenizers): in a
    checkout, the repository's; in an installed wheel, `<prefix>/share/minimind_jax/<name>`, where the wheel puts it."""
    checkout = Path(__file__).resolve().parents[1] / "data" / name
    installed = Path(sys.prefix) / "share" / "minimind_jax" / name
    return checkout if checkout.exists() or not installed.exists() else installed

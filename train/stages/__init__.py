"""One module per stage; each defines STAGE (a train.stage.Stage). Importing is cheap: nothing runs here."""
import importlib
import importlib.util

from train.args import STAGE_NAMES


def get(name: str):
    """The Stage called `name` (a canonical name from train.args.STAGE_NAMES)."""
    return importlib.import_module(f"train.stages.{name}").STAGE


def available() -> list[str]:
    return [n for n in STAGE_NAMES if importlib.util.find_spec(f"train.stages.{n}") is not None]


def module_doc(name: str) -> str | None:
    """The stage module's docstring (what the stage trains), for `--stage X --help`."""
    return importlib.import_module(f"train.stages.{name}").__doc__

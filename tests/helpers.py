"""Where the tests find the repository and the shared golden fixtures (../shared beside the checkout)."""
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MINIMIND_SHARED", REPO.parent / "shared"))
GOLDEN = SHARED / "golden"

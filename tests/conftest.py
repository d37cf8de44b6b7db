import sys
from pathlib import Path

# The tests import their helpers as `tests.support`; the repository root must be importable for that.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import sys
from pathlib import Path

# The tests import their helpers as `tests.support`; the repository root must be importable for that.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Property tests are reproducible in the README's test command (and so in CI): the same examples every run. A
# fuzzing campaign by hand (ESPRESSO_FUZZ_EXAMPLES=20000 ...) explores afresh each time instead.
import os  # noqa: E402

from hypothesis import settings  # noqa: E402

settings.register_profile("espresso", derandomize=not os.environ.get("ESPRESSO_FUZZ_EXAMPLES"), print_blob=True)
settings.load_profile("espresso")

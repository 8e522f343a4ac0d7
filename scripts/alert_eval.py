"""`make alert-eval`: the regression alerts measured over simulated weeks.

The evaluation lives in tests/kit/alert_eval.py (the test suite runs its --quick mode);
this is its command line.
"""

import sys
from pathlib import Path

# tests/kit is the test and benchmark kit; it is not shipped, so run from the checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # noqa: E402

from tests.kit.alert_eval import main

if __name__ == "__main__":
    sys.exit(main())

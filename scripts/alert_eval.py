"""`make alert-eval`: the regression alerts measured over simulated weeks.

The evaluation lives in exporter/testkit/alert_eval.py (the test suite runs its --quick mode);
this is its command line.
"""

import sys

from exporter.testkit.alert_eval import main

if __name__ == "__main__":
    sys.exit(main())

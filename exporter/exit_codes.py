"""The command line's exit codes, for both the exporter and `bench`."""

EXIT_OK = 0
EXIT_CONFIG = 1   # the config file is missing or invalid
EXIT_USAGE = 2    # bad flags or arguments, or a missing optional dependency (argparse uses 2 too)
EXIT_RUNTIME = 3  # cannot listen; or every bench request failed
EXIT_REGRESSION = 4  # bench --fail-on-regression: a case got worse by more than the limit, with confidence

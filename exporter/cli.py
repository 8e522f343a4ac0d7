"""Command line: flags, subcommands, exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Optional, Sequence

from . import __version__
from .config import ConfigError, load_file
from .exit_codes import EXIT_CONFIG, EXIT_OK, EXIT_RUNTIME, EXIT_USAGE

DEFAULT_LISTEN = "127.0.0.1:9877"
# What `bench` imports beyond the exporter's own dependencies: the `report` extra.
REPORT_MODULES = ("numpy", "matplotlib")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config.file", dest="config_file", metavar="FILE",
        help="scenario YAML (default: the scenarios shipped with the package)",
    )
    parser.add_argument(
        "--log.level", dest="log_level", default="info", choices=["debug", "info", "warning", "error"],
        help="log level (default: info)",
    )


def _exporter_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ollama-perf-exporter",
        description="Prometheus exporter that runs benchmark scenarios against Ollama on a schedule. "
        "Subcommands: 'bench' runs the scenarios once and writes a report; 'accept' takes a case's "
        "current level as its new regression reference.",
    )
    _common(p)
    p.add_argument("--config.check", dest="config_check", action="store_true", help="validate the config and exit")
    p.add_argument(
        "--web.listen-address", dest="listen_address", default=DEFAULT_LISTEN, metavar="HOST:PORT",
        help=f"where to serve /metrics (default: {DEFAULT_LISTEN})",
    )
    p.add_argument(
        "--web.config.file", dest="web_config_file", metavar="FILE",
        help="TLS and basic auth for every endpoint but /-/healthy and /-/ready, in the Prometheus "
        "exporter-toolkit format (tls_server_config, basic_auth_users with bcrypt hashes)",
    )
    p.add_argument("--results.file", dest="results_file", metavar="PATH", help="append every result record to this JSON-lines file")
    p.add_argument(
        "--results.max-size", dest="results_max_size", type=_size, default=None, metavar="SIZE",
        help="rotate the results file at this size (e.g. 100MB; default: never)",
    )
    p.add_argument(
        "--results.keep", dest="results_keep", type=int, default=5, metavar="N",
        help="rotated results files to keep (default: 5)",
    )
    p.add_argument(
        "--shutdown.grace", dest="shutdown_grace", type=float, default=10.0, metavar="SECONDS",
        help="on SIGTERM, how long to let requests in flight finish (default: 10)",
    )
    p.add_argument(
        "--shard.count", dest="shard_count", type=int, default=1, metavar="N",
        help="replicas that split the targets between them (default: 1, every target here)",
    )
    p.add_argument(
        "--shard.index", dest="shard_index", default="0", metavar="I|auto",
        help="this replica's share, 0..N-1, of targets by hashmod of their name; 'auto' takes it "
        "from a StatefulSet pod name such as exporter-2 (default: 0)",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def _shard(args: argparse.Namespace):
    """The Shard the flags ask for; ValueError says what is wrong with them."""
    from .shard import Shard, ordinal_from_hostname

    if args.shard_index == "auto":
        index = ordinal_from_hostname()
    else:
        try:
            index = int(args.shard_index)
        except ValueError:
            raise ValueError(f"--shard.index: expected a number or 'auto', got {args.shard_index!r}") from None
    return Shard(index, args.shard_count)


def _size(value: str) -> int:
    units = {"": 1, "B": 1, "KB": 1024, "K": 1024, "MB": 1024**2, "M": 1024**2, "GB": 1024**3, "G": 1024**3}
    text = value.strip().upper()
    number = text.rstrip("KMGB")
    unit = text[len(number):]
    try:
        size = int(float(number) * units[unit])
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"expected a size such as 50MB, got {value!r}") from None
    if size <= 0:
        raise argparse.ArgumentTypeError("size must be positive")
    return size


def _percent(value: str) -> float:
    try:
        pct = float(value.strip().rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage such as 10 or 10%, got {value!r}") from None
    if not 0 <= pct < 1000:
        raise argparse.ArgumentTypeError("must be between 0 and 1000 percent")
    return pct


def _positive(value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return v


def _rates(value: str) -> tuple[float, ...]:
    rates = tuple(_positive(v) for v in value.split(",") if v.strip())
    if not rates:
        raise argparse.ArgumentTypeError("give at least one rate, e.g. 0.5,1,2")
    return tuple(sorted(set(rates)))


def _contexts(value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(sorted({int(v) for v in value.split(",") if v.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected context sizes such as 512,1024,2048, got {value!r}") from None
    if not sizes or any(s < 16 for s in sizes):
        raise argparse.ArgumentTypeError("give at least one context size of 16 tokens or more")
    return sizes


def _bench_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ollama-perf-exporter bench",
        description="Run the scenarios once and write a report (raw JSON, REPORT.md, plots).",
    )
    _common(p)
    p.add_argument("--output", required=True, metavar="DIR", help="report directory (created)")
    p.add_argument("--compare", metavar="OLD_DIR", help="an earlier report directory to compare against")
    p.add_argument(
        "--fail-on-regression", dest="fail_on_regression", type=_percent, metavar="PCT",
        help="with --compare: exit 4 when a case got worse by more than PCT percent (median, 95%% confidence)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument(
        "--rate-sweep", dest="rate_sweep", type=_rates, metavar="RATES",
        help="after the scenarios, an open-loop sweep of each scenario's first case at these request rates "
        "(per second, Poisson arrivals), e.g. 0.5,1,2,4",
    )
    p.add_argument(
        "--context-ladder", dest="context_ladder", type=_contexts, metavar="SIZES",
        help="after the scenarios, each scenario's first case at these num_ctx sizes (model reloaded per step, "
        "prompt filling half), memory and prefill per step, e.g. 512,1024,2048,4096",
    )
    p.add_argument("--rate-duration", dest="rate_duration", type=_positive, default=30.0, metavar="SECONDS",
                   help="arrivals per rate for this long (default: 30)")
    p.add_argument("--ttft-limit", dest="ttft_limit", type=_positive, default=2.0, metavar="SECONDS",
                   help="rate sweep: p95 TTFT limit for goodput and the knee (default: 2)")
    p.add_argument("--tpot-limit", dest="tpot_limit", type=_positive, default=0.2, metavar="SECONDS",
                   help="rate sweep: p95 time-per-output-token limit (default: 0.2)")
    p.add_argument(
        "--memory-bandwidth", dest="memory_bandwidth", type=float, metavar="GB_PER_S",
        help="memory bandwidth for the decode-speed bound (default: measured with a single-thread copy)",
    )
    return p


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)s",
        stream=sys.stderr,
    )
    # APScheduler logs every job start and end at INFO: noise at one line per probe run.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, logging.getLogger().level))
    # httpx (under the ollama package) logs every control call at INFO: one line per /api/ps.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))


def _load_or_report(path: Optional[str]):
    try:
        return load_file(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return None


def run_exporter(args: argparse.Namespace) -> int:
    from prometheus_client import disable_created_metrics

    from .http import HTTPServer, WebConfigError, WebConfigFile, parse_listen_address
    from .service import Exporter

    try:
        shard = _shard(args)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    config = _load_or_report(args.config_file)
    if config is None:
        return EXIT_CONFIG
    web_config = None
    if args.web_config_file:
        # Read before anything listens: an exporter whose TLS or users did not load must not
        # serve in the clear instead.
        try:
            web_config = WebConfigFile(args.web_config_file)
        except WebConfigError as exc:
            print(f"--web.config.file: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    if args.config_check:
        files = f" plus {len(config.target_files)} target file(s), read when running" if config.target_files else ""
        print(
            f"{config.source}: OK: {len(config.scenarios)} scenario(s), {len(config.targets)} target(s){files}, "
            f"{config.label_combinations} label combination(s)"
        )
        from .slo_check import slo_warnings

        # Warnings, not errors: the config works, but some of its alerts fire on one bad request.
        for warning in slo_warnings(config):
            print(f"warning: {warning}", file=sys.stderr)
        return EXIT_OK
    try:
        host, port = parse_listen_address(args.listen_address)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    log = logging.getLogger("exporter")
    # No `_created` series: nothing reads them, and they are ~10% of a large exposition.
    disable_created_metrics()
    exporter = Exporter(
        args.config_file, config, results_path=args.results_file,
        results_max_bytes=args.results_max_size, results_keep=args.results_keep, shard=shard,
    )
    try:
        server = HTTPServer(exporter.app(), host, port, web_config)
    except OSError as exc:
        print(f"cannot listen on {args.listen_address}: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    # The reload runs on its own thread: a signal handler must not block on the reload lock.
    signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=exporter.reload, name="reload", daemon=True).start())
    server.start()
    exporter.start()
    log.info("listening on %s:%d, version %s%s", host, server.port, __version__,
             f", web config {args.web_config_file}" if web_config else "")
    # Wake now and then: the kernel may hand a signal to another thread, and its Python
    # handler (stop, reload) runs only when the main thread next executes.
    while not stop.wait(0.5):
        pass
    log.info("shutting down")
    server.stop()
    finished = exporter.shutdown(args.shutdown_grace)
    log.info("stopped")
    if not finished:
        # Requests still in flight after the grace period would hold the interpreter's exit
        # for up to their timeout. The results file is closed, so nothing is lost by leaving now.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_OK)
    return EXIT_OK


def _missing_report_modules() -> list[str]:
    import importlib.util

    return [m for m in REPORT_MODULES if importlib.util.find_spec(m) is None]


def run_bench(args: argparse.Namespace) -> int:
    missing = _missing_report_modules()
    if missing:
        # Said before anything runs: a bench takes minutes, and the exporter alone needs neither.
        print(f"bench needs {' and '.join(missing)}: pip install 'ollama-perf-exporter[report]'", file=sys.stderr)
        return EXIT_USAGE
    from .report.bench import run_bench as bench

    config = _load_or_report(args.config_file)
    if config is None:
        return EXIT_CONFIG
    if config.target_files:
        from .config import resolve_targets
        from .discovery import read_target_files

        try:
            config = resolve_targets(config, read_target_files(config.target_files))
        except ConfigError as exc:
            print(str(exc), file=sys.stderr)
            return EXIT_CONFIG
    bandwidth = args.memory_bandwidth * 1e9 if args.memory_bandwidth else None
    sweep = None
    if args.rate_sweep:
        from .report.ratesweep import RateSweep

        sweep = RateSweep(args.rate_sweep, args.rate_duration, args.ttft_limit, args.tpot_limit)
    ladder = None
    if args.context_ladder:
        from .report.ladder import ContextLadder

        ladder = ContextLadder(args.context_ladder)
    return bench(config, args.output, compare=args.compare, quiet=args.quiet, memory_bandwidth=bandwidth,
                 fail_on_regression=args.fail_on_regression, rate_sweep=sweep, context_ladder=ladder)


def _accept_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ollama-perf-exporter accept",
        description="Accept the current level of a case as its new regression reference (ends its "
        "regression alert; docs/regression.md). Tells the running exporter (POST /-/accept), which "
        "records it in its results file; with --results.file and no running exporter, appends the "
        "record there for the next start to replay.",
    )
    p.add_argument("--target", required=True)
    for name in ("scenario", "model", "case", "concurrency", "start", "quantity"):
        p.add_argument(f"--{name}", default=None, help=f"only this {name} (default: every one)")
    p.add_argument("--url", default=None, metavar="URL",
                   help=f"the exporter (default: http://{DEFAULT_LISTEN.replace('0.0.0.0', '127.0.0.1')})")
    p.add_argument("--results.file", dest="results_file", metavar="PATH",
                   help="append the acceptance to this results file instead (the exporter must not be running)")
    return p


def run_accept(args: argparse.Namespace) -> int:
    import time
    import urllib.error
    import urllib.parse
    import urllib.request

    from .results import SCOPE, Acceptance, ResultsWriter

    scope = {k: getattr(args, k) for k in SCOPE if getattr(args, k) is not None}
    if args.results_file:
        writer = ResultsWriter(args.results_file)
        ok = writer.write_acceptance(Acceptance(at=time.time(), **scope))
        writer.close()
        print(f"recorded in {args.results_file}" if ok else f"cannot write {args.results_file}")
        return 0 if ok else 1
    base = args.url or "http://" + DEFAULT_LISTEN.replace("0.0.0.0", "127.0.0.1")
    url = base.rstrip("/") + "/-/accept?" + urllib.parse.urlencode(scope)
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=10) as resp:
            print(resp.read().decode().strip())
            return 0
    except urllib.error.HTTPError as exc:
        print(exc.read().decode().strip() or str(exc), file=sys.stderr)
    except OSError as exc:
        print(f"cannot reach the exporter at {base}: {exc}", file=sys.stderr)
    return 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "accept":
        return run_accept(_accept_parser().parse_args(argv[1:]))
    if argv and argv[0] == "bench":
        args = _bench_parser().parse_args(argv[1:])
        _setup_logging(args.log_level)
        return run_bench(args)
    args = _exporter_parser().parse_args(argv)
    _setup_logging(args.log_level)
    return run_exporter(args)

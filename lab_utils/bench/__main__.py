"""``python -m lab_utils.bench``: run the benchmark (``make bench``).

The ``session`` suite (:mod:`lab_utils.bench.session_suite`: a fresh kernel to a first answer,
classic against Spark Connect, on a private lab of its own) is run here, before the others;
every other suite and option goes to :func:`lab_utils.bench.inference_suite.main`.
"""

from __future__ import annotations

import argparse
import sys

from lab_utils.bench.inference_suite import main as other_suites

#: What ``--suites`` runs when not given: every suite (the session suite first).
DEFAULT_SUITES = ("server", "session", "inference", "training")
#: Suites run only when asked for: ``text`` (notebook 10's encoder,
#: :mod:`lab_utils.bench.text_suite`).
OPT_IN_SUITES = ("text",)


def _session_options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lab_utils.bench", add_help=False)
    parser.add_argument("--suites", default=",".join(DEFAULT_SUITES))
    parser.add_argument("--session-rounds", type=int, default=5,
                        help="session suite: rounds of the three probes (default 5)")
    parser.add_argument("--session-idle-timeout", type=int, default=10,
                        help="session suite: the private lab's Connect idle timeout, seconds "
                             "(default 10; a cold probe waits for it)")
    parser.add_argument("--text-n", type=int, default=2000,
                        help="text suite: docstring texts embedded (default 2000)")
    return parser


def split_argv(argv: list[str]) -> tuple[argparse.Namespace, list[str] | None]:
    """The session suite's options, and the arguments for the other suites (``None``: no other
    suite was asked for).

    >>> opts, rest = split_argv(["--suites", "session,training", "--groups", "10"])
    >>> opts.session, opts.session_rounds, rest
    (True, 5, ['--groups', '10', '--suites', 'training'])
    >>> split_argv(["--suites=session", "--session-rounds", "3"])[1] is None
    True
    >>> opts, rest = split_argv(["--rest"])
    >>> opts.session, rest
    (True, ['--rest', '--suites', 'server,inference,training'])
    """
    parser = _session_options()
    opts, rest = parser.parse_known_args(argv)
    suites = [s.strip() for s in opts.suites.split(",") if s.strip()]
    unknown = sorted(set(suites) - set(DEFAULT_SUITES) - set(OPT_IN_SUITES))
    if unknown:  # before any suite starts a lab
        parser.error(f"unknown suite(s) {unknown}: use "
                     f"{', '.join(DEFAULT_SUITES + OPT_IN_SUITES)}")
    opts.session = "session" in suites
    opts.text = "text" in suites
    others = [s for s in suites if s not in ("session", "text")]
    if not others and (opts.session or opts.text):
        return opts, None
    return opts, [*rest, "--suites", ",".join(others)]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(argv):
        print(f"Suites: {', '.join(DEFAULT_SUITES)} (default: all), and "
              f"{', '.join(OPT_IN_SUITES)} when asked for. The session and text suites "
              "(lab_utils.bench.session_suite, lab_utils.bench.text_suite) take:")
        print("\n".join(line for line in _session_options().format_help().splitlines()[2:]))
        print()
        return other_suites(argv)
    opts, rest = split_argv(argv)
    if opts.session:
        from lab_utils.bench import session_suite

        table = session_suite.run(rounds=opts.session_rounds,
                                  idle_timeout=opts.session_idle_timeout)
        print(session_suite.report(table))
    if opts.text:
        from lab_utils.bench import text_suite
        from lab_utils.session import get_spark

        spark = get_spark("benchmark: text encoder")
        try:
            print(text_suite.report(text_suite.run(spark, n=opts.text_n)))
        finally:
            spark.stop()
    return 0 if rest is None else other_suites(rest)


if __name__ == "__main__":
    sys.exit(main())

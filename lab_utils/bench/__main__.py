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


def _session_options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lab_utils.bench", add_help=False)
    parser.add_argument("--suites", default=",".join(DEFAULT_SUITES))
    parser.add_argument("--session-rounds", type=int, default=5,
                        help="session suite: rounds of the three probes (default 5)")
    parser.add_argument("--session-idle-timeout", type=int, default=10,
                        help="session suite: the private lab's Connect idle timeout, seconds "
                             "(default 10; a cold probe waits for it)")
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
    unknown = sorted(set(suites) - set(DEFAULT_SUITES))
    if unknown:  # before any suite starts a lab
        parser.error(f"unknown suite(s) {unknown}: use {', '.join(DEFAULT_SUITES)}")
    opts.session = "session" in suites
    others = [s for s in suites if s != "session"]
    if not others and opts.session:
        return opts, None
    return opts, [*rest, "--suites", ",".join(others)]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(argv):
        print(f"Suites: {', '.join(DEFAULT_SUITES)} (default: all). The session suite "
              "(lab_utils.bench.session_suite) takes:")
        print("\n".join(line for line in _session_options().format_help().splitlines()[2:]))
        print()
        return other_suites(argv)
    opts, rest = split_argv(argv)
    if opts.session:
        from lab_utils.bench import session_suite

        table = session_suite.run(rounds=opts.session_rounds,
                                  idle_timeout=opts.session_idle_timeout)
        print(session_suite.report(table))
    return 0 if rest is None else other_suites(rest)


if __name__ == "__main__":
    sys.exit(main())

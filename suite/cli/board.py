"""The leaderboard: ``leaderboard build``, and submissions (``submit``, ``validate``, ``accept``)."""
from __future__ import annotations

import argparse

from suite.cli.verbs import command


def _build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", help="folder of results records (default: the checkout's results/)")
    p.add_argument("--out", help="site folder (default leaderboards/site); only a folder clsuite built is replaced")


@command("leaderboard build", "turn results/*.json into a static site (default leaderboards/site/)", _build_args)
def _lb_build(args: argparse.Namespace) -> int:
    from suite.leaderboard.build import build_site

    print(build_site(args.results, args.out))
    return 0


def _submit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("records", nargs="+")
    p.add_argument("--out", default="submission.json")
    p.add_argument("--method-source", help="where the method's code lives (URL, package==version)")


@command("submit", "pack run records into one submission file", _submit_args)
def _submit(args: argparse.Namespace) -> int:
    from suite.leaderboard.submit import pack

    print(pack(args.records, args.out, args.method_source or ""))
    return 0


def _submission_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("submission", help="a submission file (clsuite submit), or a submission folder "
                                      "(submissions/<name>/: submission.json and checklist.yaml)")
    p.add_argument("--checklist", help="the submitter's checklist (default: checklist.yaml beside the submission, "
                                       "when there is one); each declaration is checked against the records")


@command("validate", "check a submission: schema, board, manifests, seeds, recomputed aggregates, and its checklist "
                     "against the records", _submission_arg)
def _validate(args: argparse.Namespace) -> int:
    from suite.leaderboard.submit import check_submission, describe_checklist, submission_files

    problems = check_submission(args.submission, args.checklist)
    for line in problems:
        print(f"rejected: {line}")
    if not problems:
        sub, checklist = submission_files(args.submission, args.checklist)
        print(f"valid: {sub}")
        if checklist is not None:
            print(f"checklist agrees with the records: {checklist}: {describe_checklist(checklist)}")
    return 1 if problems else 0


def _accept_args(p: argparse.ArgumentParser) -> None:
    _submission_arg(p)
    p.add_argument("--results", help="the records folder (default: the checkout's results/)")


@command("accept", "validate a submission and put its records into results/ (the board's input)", _accept_args)
def _accept(args: argparse.Namespace) -> int:
    from suite.leaderboard.build import default_results_dir
    from suite.leaderboard.submit import accept

    for path in accept(args.submission, args.results or default_results_dir(), args.checklist):
        print(path)
    return 0

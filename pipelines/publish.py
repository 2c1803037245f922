"""`pulse publish`: publish a JSON Lines file, or generated posts, to a Pub/Sub topic at a rate.

For demos and load tests of the streaming job. File lines are published verbatim
(malformed ones too, so the job's dead-letter path gets exercised), with the Post
attributes (post_id, event_time, keyword, lang) taken from lines that are JSON objects.
Synthetic posts carry `created_at` = the moment each is published.

    PUBSUB_EMULATOR_HOST=127.0.0.1:8085 pulse publish --topic projects/demo/topics/posts --synthetic 1000 --rate 200
    pulse publish --topic projects/demo/topics/posts --file data/sample_stream.jsonl --rate 50

Exit status: 0 all acknowledged; 1 the topic is missing or some messages were not
acknowledged; 2 a usage mistake (bad flag, missing file, no credentials).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import NoReturn

EXIT_USAGE = 2
EXIT_FAILED = 1


class UsageError(Exception):
    """A user mistake; the message is the whole one-line explanation."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a mistake in one line (no usage dump) and exits 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def fail(prog: str, message: str, code: int) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="pulse publish", allow_abbrev=False,
                      description="Publish posts to a Pub/Sub topic at a target rate.")
    p.add_argument("--topic", required=True, help="projects/PROJECT/topics/TOPIC")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", help="JSON Lines file of posts (one message per non-blank line)")
    source.add_argument("--synthetic", type=int, metavar="N", help="publish N generated posts")
    p.add_argument("--rate", type=float, default=None, help="messages per second (default: as fast as acked)")
    p.add_argument("--keywords", default="acme,globex,initech", help="synthetic posts' keywords, comma-separated")
    p.add_argument("--seed", type=int, default=0, help="synthetic posts' random seed")
    p.add_argument("--create_topic", action="store_true", help="create the topic if it does not exist")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    from connectors.publisher import check_topic
    args = build_parser().parse_args(argv)
    try:
        check_topic(args.topic)
    except ValueError as e:
        raise UsageError(f"--topic: {e}") from None
    if args.rate is not None and args.rate <= 0:
        raise UsageError("--rate must be a positive number of messages per second")
    if args.synthetic is not None and args.synthetic < 1:
        raise UsageError("--synthetic needs a positive count")
    if args.file is not None and not os.path.isfile(args.file):
        raise UsageError(f"--file {args.file}: no such file")
    args.keywords = tuple(k.strip() for k in args.keywords.split(",") if k.strip())
    if not args.keywords:
        raise UsageError("--keywords is empty")
    return args


def main(argv: list[str] | None = None) -> int:
    prog = "pulse publish"
    try:
        args = parse_args(list(sys.argv[1:] if argv is None else argv))
    except UsageError as e:
        return fail(prog, str(e), EXIT_USAGE)

    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    from connectors.publisher import (Publisher, PublishError, count_lines, post_message,
                                      read_jsonl, synthetic_posts)

    try:
        publisher = Publisher(args.topic)
    except auth_exc.DefaultCredentialsError:
        return fail(prog, "no Google Cloud credentials (set PUBSUB_EMULATOR_HOST for the emulator, "
                          "or run `gcloud auth application-default login`)", EXIT_USAGE)
    try:
        try:
            exists = publisher.topic_exists()
        except gexc.GoogleAPICallError as e:
            return fail(prog, f"cannot reach Pub/Sub for {args.topic}: {e.message}", EXIT_FAILED)
        if not exists:
            if not args.create_topic:
                return fail(prog, f"topic {args.topic} does not exist (pass --create_topic to create it)",
                            EXIT_FAILED)
            publisher.client.create_topic(name=args.topic)

        if args.file:
            total = count_lines(args.file)
            messages = read_jsonl(args.file)
        else:
            total = args.synthetic
            messages = map(post_message, synthetic_posts(args.synthetic, keywords=args.keywords, seed=args.seed))
        not_json = 0

        def counted(stream):
            nonlocal not_json
            for m in stream:
                not_json += not m.attributes
                yield m

        started = time.monotonic()
        try:
            result = publisher.publish(counted(messages), rate=args.rate, total=total,
                                       progress=not args.no_progress)
        except PublishError as e:
            return fail(prog, str(e), EXIT_FAILED)
        elapsed = max(time.monotonic() - started, 1e-9)
        note = f"; {not_json} without Post attributes (the job dead-letters malformed ones)" if not_json else ""
        print(f"published {result.published} messages to {args.topic} in {elapsed:.1f} s "
              f"({result.published / elapsed:.0f} msg/s){note}")
        return 0
    except KeyboardInterrupt:
        return fail(prog, "interrupted", 130)
    finally:
        publisher.close()


if __name__ == "__main__":
    sys.exit(main())

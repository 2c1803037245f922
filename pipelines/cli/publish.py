"""`pulse publish`: publish a JSON Lines file, or generated posts, to a Pub/Sub topic at a rate.

For demos and load tests of the streaming job. Each line of a file is one message whose
data are the line's bytes exactly as they are, without the line's terminator ("\n" or
"\r\n"): malformed ones too (invalid UTF-8, not JSON, numbers past Python's digit limit,
deep nesting), so the job's dead-letter path gets exercised. Empty lines are skipped and
counted (Pub/Sub refuses an empty message); a line of spaces is sent. The Post attributes
(post_id, event_time, keyword, lang, post_key) are added where the line is a JSON object
they can be read from safely (connectors/feeds/publisher.py says when). A line Pub/Sub cannot
take (over its 10 MB limit) is reported by its line number; the others are still sent.
Synthetic posts carry `created_at` = the moment each is published.

    PUBSUB_EMULATOR_HOST=127.0.0.1:8085 pulse publish --topic projects/demo/topics/posts --synthetic 1000 --rate 200
    pulse publish --topic projects/demo/topics/posts --file data/sample_stream.jsonl --rate 50

Exit status: 0 all acknowledged; 1 the topic is missing or some messages were not
acknowledged; 2 a usage mistake (bad flag, missing file, no credentials).
"""
from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
import time
from typing import NoReturn

EXIT_USAGE = 2
EXIT_FAILED = 1


class UsageError(Exception):
    """A user mistake; the message is the whole one-line explanation."""


FLAG_SHAPE = re.compile(r"--?[A-Za-z][A-Za-z0-9_-]{0,40}")
_BAD_VALUE = re.compile(r"(invalid .*?(value|choice)): .*")


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a mistake in one line (no usage dump) and exits 2.

    It never repeats what it does not know: an unknown flag is named (when it looks like a
    flag), its value and any stray word only counted, since a mistyped flag's value may be a
    secret (`--bearer TOKEN`). With `echo_values=False` the value of a known flag that does
    not parse is not repeated either."""

    def __init__(self, *args, echo_values: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.echo_values = echo_values

    def error(self, message: str) -> NoReturn:
        if not self.echo_values:
            message = _BAD_VALUE.sub(r"\1 (the value is not shown)", message)
        raise UsageError(message)

    def known_flags(self) -> list[str]:
        return [opt for action in self._actions for opt in action.option_strings]

    def parse_args(self, args=None, namespace=None):
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            raise UsageError(self.unknown_message(unknown))
        return parsed

    def unknown_message(self, unknown: list[str]) -> str:
        shown, hidden = [], 0
        for arg in unknown:
            name, equals, _ = arg.partition("=")
            if arg.startswith("-") and FLAG_SHAPE.fullmatch(name):
                shown.append(name)
                hidden += bool(equals)
            else:
                hidden += 1
        message = "unrecognized arguments: " + " ".join(dict.fromkeys(shown))
        if hidden:
            what = f"{hidden} argument{'s' if hidden > 1 else ''}"
            message += f" (and {what} not shown)" if shown else f"{what} (not shown)"
        close = difflib.get_close_matches(shown[0], self.known_flags(), n=1) if shown else []
        return message + (f"; did you mean {close[0]}?" if close else "")


def fail(prog: str, message: str, code: int) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="pulse publish", allow_abbrev=False,
                      description="Publish posts to a Pub/Sub topic at a target rate.")
    p.add_argument("--topic", required=True, help="projects/PROJECT/topics/TOPIC")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", help="JSON Lines file of posts (one message per non-empty line, "
                                       "its bytes as they are)")
    source.add_argument("--synthetic", type=int, metavar="N", help="publish N generated posts")
    p.add_argument("--rate", type=float, default=None, help="messages per second (default: as fast as acked)")
    p.add_argument("--keywords", default="acme,globex,initech", help="synthetic posts' keywords, comma-separated")
    p.add_argument("--seed", type=int, default=0, help="synthetic posts' random seed")
    p.add_argument("--create_topic", action="store_true", help="create the topic if it does not exist")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    from connectors.feeds.publisher import check_topic
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

    from connectors.feeds.publisher import (Publisher, PublishError, count_lines, file_lines, line_message,
                                      post_message, synthetic_posts)

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

        not_json = empty = 0

        def file_messages():
            nonlocal empty
            for _, data in file_lines(args.file):
                if not data:
                    empty += 1
                    continue
                yield line_message(data)

        if args.file:
            total = count_lines(args.file)
            messages = file_messages()
        else:
            total = args.synthetic
            messages = map(post_message, synthetic_posts(args.synthetic, keywords=args.keywords, seed=args.seed))

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
            if args.file:
                return fail(prog, _failed_lines(args.file, e, file_lines), EXIT_FAILED)
            return fail(prog, str(e), EXIT_FAILED)
        elapsed = max(time.monotonic() - started, 1e-9)
        note = f"; {not_json} without Post attributes (the job dead-letters malformed ones)" if not_json else ""
        if empty:
            note += f"; {empty} empty line{'s' if empty > 1 else ''} skipped"
        print(f"published {result.published} messages to {args.topic} in {elapsed:.1f} s "
              f"({result.published / elapsed:.0f} msg/s){note}")
        return 0
    except KeyboardInterrupt:
        return fail(prog, "interrupted", 130)
    finally:
        publisher.close()


def _failed_lines(path: str, error, file_lines) -> str:
    """PublishError (indices among the non-empty lines) -> one line naming the file's line numbers."""
    wanted = {i: reason for i, reason in error.failed}
    numbers, index = {}, 0
    for number, data in file_lines(path):
        if not data:
            continue
        if index in wanted:
            numbers[index] = number
            if len(numbers) == len(wanted):
                break
        index += 1
    first = min(wanted)
    shown = ", ".join(str(numbers.get(i, "?")) for i in sorted(wanted)[:10])
    more = f" and {len(wanted) - 10} more" if len(wanted) > 10 else ""
    return (f"{len(wanted)} line(s) of {path} were not published (line {shown}{more}); "
            f"line {numbers.get(first, '?')}: {wanted[first]}")


if __name__ == "__main__":
    sys.exit(main())

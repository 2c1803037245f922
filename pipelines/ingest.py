"""`pulse ingest`: poll X API v2 recent search for keywords (or, with `--stream`, follow the
filtered stream) and publish new posts to Pub/Sub.

The bearer token comes from the X_BEARER_TOKEN environment variable or from
`--bearer_token_file`, never from a flag value (flags end up in shell history and
process listings), and never reaches a log line. The checkpoint file keeps the newest
acknowledged post id per keyword: restart with the same file and ingestion resumes
where it stopped, without losing or repeating posts. SIGTERM / Ctrl-C stop after the
batch in flight is acknowledged and checkpointed.

    X_BEARER_TOKEN=... pulse ingest --keywords acme,globex --topic projects/demo/topics/posts \\
        --checkpoint state/ingest.json --poll_interval 60
    X_BEARER_TOKEN=... pulse ingest --stream --keywords acme,globex --topic projects/demo/topics/posts

`--stream` (where the account's access level includes the filtered stream) keeps one
stream rule per keyword and publishes posts as they arrive; it has no checkpoint (the
stream cannot resume), so posts written while it is down are missed: see
connectors/x_stream.py. `--max_posts N` stops it after N published posts.

Exit status: 0 stopped cleanly; 1 the API refused us (401/403), gave up after retries,
or publishing failed; 2 a usage mistake (bad flag, missing token or file).
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading

from pipelines.publish import EXIT_FAILED, EXIT_USAGE, OneLineParser, UsageError, fail

TOKEN_ENV = "X_BEARER_TOKEN"
FORBIDDEN_FLAGS = ("--bearer_token", "--bearer-token", "--token", "--x_bearer_token")
# Options that only mean something to recent-search polling; refused with --stream.
POLLING_ONLY = ("--checkpoint", "--poll_interval", "--once", "--max_cycles", "--max_results",
                "--backfill_pages", "--settle_s", "--requests_per_window", "--window_s")
STREAM_ONLY = ("--max_posts", "--backfill_minutes")


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="pulse ingest", allow_abbrev=False,
                      description="Poll X API v2 recent search (or follow the filtered stream) "
                                  "and publish posts to Pub/Sub.")
    p.add_argument("--keywords", required=True, help="comma-separated search queries (one Post keyword each)")
    p.add_argument("--topic", required=True, help="projects/PROJECT/topics/TOPIC")
    p.add_argument("--checkpoint", help="JSON file with the newest published id per keyword (polling; "
                                        "required without --stream)")
    p.add_argument("--bearer_token_file", help=f"file holding the bearer token (default: ${TOKEN_ENV})")
    p.add_argument("--poll_interval", type=float, default=60.0, help="seconds between polls of all keywords")
    cycles = p.add_mutually_exclusive_group()
    cycles.add_argument("--once", action="store_true", help="poll every keyword once, then exit")
    cycles.add_argument("--max_cycles", type=int, help="stop after this many polls of all keywords")
    p.add_argument("--max_results", type=int, default=100, help="posts per page, 10..100")
    p.add_argument("--backfill_pages", type=int, default=1,
                   help="pages fetched for a keyword with no checkpoint yet (its first poll)")
    p.add_argument("--settle_s", type=float, default=15.0,
                   help="ask only for posts at least this old, so late-indexed posts are not skipped (>= 10)")
    p.add_argument("--requests_per_window", type=int, default=None,
                   help="override the published recent-search limit (requests per window)")
    p.add_argument("--window_s", type=float, default=None, help="rate-limit window in seconds")
    p.add_argument("--stream", action="store_true",
                   help="follow the filtered stream (one rule per keyword) instead of polling recent search")
    p.add_argument("--max_posts", type=int, default=None,
                   help="with --stream: stop after this many published posts")
    p.add_argument("--backfill_minutes", type=int, default=None,
                   help="with --stream: ask for up to 5 minutes of posts missed while disconnected "
                        "(only some access levels allow it)")
    p.add_argument("--api_url", default=None, help="X API base URL (default https://api.twitter.com)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (the token stays masked)")
    return p


def read_token(token_file: str | None) -> str:
    if token_file:
        if not os.path.isfile(token_file):
            raise UsageError("--bearer_token_file: no such file")
        with open(token_file, encoding="utf-8") as f:
            token = f.read().strip()
        if not token:
            raise UsageError("--bearer_token_file: the file is empty")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise UsageError(f"no X API bearer token: set {TOKEN_ENV} or pass --bearer_token_file")
    return token


def parse_args(argv: list[str]):
    for arg in argv:
        if arg.split("=", 1)[0] in FORBIDDEN_FLAGS:
            # Said without echoing the value: it is the secret.
            raise UsageError(f"the bearer token is never a flag value; set {TOKEN_ENV} or pass "
                             "--bearer_token_file")
    from connectors.publisher import check_topic
    args = build_parser().parse_args(argv)
    given = {arg.split("=", 1)[0] for arg in argv if arg.startswith("--")}
    if args.stream:
        clash = [f for f in POLLING_ONLY if f in given]
        if clash:
            raise UsageError(f"{clash[0]} is for recent-search polling; it cannot be used with --stream")
        if args.max_posts is not None and args.max_posts < 1:
            raise UsageError("--max_posts must be positive")
        if args.backfill_minutes is not None and not 1 <= args.backfill_minutes <= 5:
            raise UsageError("--backfill_minutes must be between 1 and 5")
    else:
        clash = [f for f in STREAM_ONLY if f in given]
        if clash:
            raise UsageError(f"{clash[0]} needs --stream")
        if not args.checkpoint:
            raise UsageError("the following arguments are required: --checkpoint")
    try:
        check_topic(args.topic)
    except ValueError as e:
        raise UsageError(f"--topic: {e}") from None
    args.keywords = list(dict.fromkeys(k.strip() for k in args.keywords.split(",") if k.strip()))
    if not args.keywords:
        raise UsageError("--keywords is empty")
    if not 10 <= args.max_results <= 100:
        raise UsageError("--max_results must be between 10 and 100 (the API's bounds)")
    if args.poll_interval <= 0 or args.backfill_pages < 1:
        raise UsageError("--poll_interval and --backfill_pages must be positive")
    if args.settle_s and args.settle_s < 10:
        raise UsageError("--settle_s must be 0 or at least 10 (the API rejects a newer end_time)")
    if args.once:
        args.max_cycles = 1
    if args.max_cycles is not None and args.max_cycles < 1:
        raise UsageError("--max_cycles must be positive")
    args.token = read_token(args.bearer_token_file)
    return args


NO_CREDENTIALS = ("no Google Cloud credentials (set PUBSUB_EMULATOR_HOST for the emulator, "
                  "or run `gcloud auth application-default login`)")


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event):
    """SIGINT/SIGTERM set `stop` (the loops finish the batch in flight) while the block runs."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None, *, clock=None, stop: threading.Event | None = None) -> int:
    """`clock` and `stop` are for tests (a FakeClock; a stop event set mid-run)."""
    prog = "pulse ingest"
    try:
        args = parse_args(list(sys.argv[1:] if argv is None else argv))
    except UsageError as e:
        return fail(prog, str(e), EXIT_USAGE)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from google.auth import exceptions as auth_exc

    from connectors.checkpoint import Checkpoint, CheckpointError
    from connectors.publisher import Publisher, PublishError
    from connectors.rate_limit import Backoff, Fatal, Stopped, SystemClock
    from connectors.x_api import Ingester, RecentSearch, make_client, search_limiter

    stop = stop or threading.Event()
    clock = clock or SystemClock(stop)
    if args.stream:
        return _main_stream(prog, args, clock, stop)
    try:
        checkpoint = Checkpoint(args.checkpoint)
    except CheckpointError as e:
        return fail(prog, str(e), EXIT_USAGE)
    try:
        publisher = Publisher(args.topic)
    except auth_exc.DefaultCredentialsError:
        return fail(prog, NO_CREDENTIALS, EXIT_USAGE)
    client = make_client(args.token, api_url=args.api_url)
    limiter = search_limiter(clock, args.requests_per_window, args.window_s)
    search = RecentSearch(client, limiter, Backoff(), clock, max_results=args.max_results,
                          settle_s=args.settle_s, stop=stop)
    ingester = Ingester(search, publisher, checkpoint, args.keywords, clock=clock,
                        poll_interval_s=args.poll_interval, backfill_pages=args.backfill_pages, stop=stop)

    try:
        with stop_on_signals(stop):
            stats = ingester.run(max_cycles=args.max_cycles)
    except (Fatal, PublishError) as e:
        return fail(prog, str(e), EXIT_FAILED)
    except Stopped:
        stats = ingester.stats
    finally:
        publisher.close()
    print(f"published {stats.published} posts in {stats.cycles} poll cycle(s) "
          f"({search.requests} API requests); checkpoint {args.checkpoint}")
    return 0


def _main_stream(prog: str, args, clock, stop: threading.Event) -> int:
    from google.auth import exceptions as auth_exc

    from connectors.publisher import Publisher, PublishError
    from connectors.rate_limit import Fatal
    from connectors.x_stream import FilteredStream, make_stream_client, stream_limiters

    try:
        # Each post is acknowledged before the next is read: keep the batching delay short.
        publisher = Publisher(args.topic, max_latency_s=0.01)
    except auth_exc.DefaultCredentialsError:
        return fail(prog, NO_CREDENTIALS, EXIT_USAGE)
    rules_limiter, connect_limiter = stream_limiters(clock)
    stream = FilteredStream(make_stream_client(args.token, api_url=args.api_url), publisher, args.keywords,
                            clock=clock, rules_limiter=rules_limiter, connect_limiter=connect_limiter,
                            stop=stop, max_posts=args.max_posts, backfill_minutes=args.backfill_minutes)
    try:
        with stop_on_signals(stop):
            stats = stream.run()
    except (Fatal, PublishError) as e:
        return fail(prog, str(e), EXIT_FAILED)
    finally:
        publisher.close()
    skipped = f"; {stats.skipped} matched only other tools' rules" if stats.skipped else ""
    print(f"published {stats.published} posts from the filtered stream ({stats.connections} "
          f"connection(s), {stats.reconnects} reconnect(s){skipped})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

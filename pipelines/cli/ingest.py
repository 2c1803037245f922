"""`pulse ingest`: poll X API v2 recent search for keywords (or, with `--stream`, follow the
filtered stream) and publish new posts to Pub/Sub.

The bearer token comes from the X_BEARER_TOKEN environment variable or from
`--bearer_token_file`, never from a flag value (flags end up in shell history and
process listings), and never reaches an output, in any spelling: not a log line at any
level (tweepy, urllib3 and requests at DEBUG included), not an error message (an API
answer that echoes the Authorization header included), not a traceback, and not an
argument-parser error (a mistyped flag's value is never repeated). The token is one line
of printable ASCII: surrounding whitespace and a trailing newline are dropped, and a file or
variable holding two lines, inner whitespace, a "Bearer " prefix or other characters is
refused with a one-line message that does not show it. A token file other users can read
gets a one-line warning, as ssh gives for a private key. The checkpoint file keeps the newest
acknowledged post id per keyword: restart with the same file and ingestion resumes
where it stopped, without losing or repeating posts. SIGTERM / Ctrl-C stop after the
batch in flight is acknowledged and checkpointed.

    X_BEARER_TOKEN=... pulse ingest --keywords acme,globex --topic projects/demo/topics/posts \\
        --checkpoint state/ingest.json --poll_interval 60
    X_BEARER_TOKEN=... pulse ingest --stream --keywords acme,globex --topic projects/demo/topics/posts

`--stream` (where the account's access level includes the filtered stream) keeps one
stream rule per keyword and publishes posts as they arrive; it has no checkpoint (the
stream cannot resume), so posts written while it is down are missed: see
connectors/feeds/x_stream.py. `--max_posts N` stops it after N published posts.

Exit status: 0 stopped cleanly; 1 the API refused us (401/403), gave up after retries,
or publishing failed; 2 a usage mistake (bad flag, missing token or file).
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import stat
import sys
import threading
import traceback

from pipelines.cli.publish import EXIT_FAILED, EXIT_USAGE, OneLineParser, UsageError
from pipelines.cli.publish import fail as _fail

TOKEN_ENV = "X_BEARER_TOKEN"
# An unknown flag that looks like an attempt to pass the token as a value.
SECRET_FLAG = re.compile(r"bearer|token|secret|auth", re.IGNORECASE)
MIN_TOKEN_CHARS = 16  # X API bearer tokens are over 100 characters; README's "..." is not one
MAX_TOKEN_FILE_BYTES = 64 * 1024
# Options that only mean something to recent-search polling; refused with --stream.
POLLING_ONLY = ("--checkpoint", "--poll_interval", "--once", "--max_cycles", "--max_results",
                "--backfill_pages", "--settle_s", "--requests_per_window", "--window_s")
STREAM_ONLY = ("--max_posts", "--backfill_minutes")


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="pulse ingest", allow_abbrev=False, echo_values=False,
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


def check_token(raw: str, source: str) -> str:
    """The token in `raw` (surrounding whitespace and newlines dropped), or UsageError saying
    what is wrong with it without showing it or any of its characters."""
    token = raw.strip()
    if not token:
        raise UsageError(f"{source}: the file is empty" if source.startswith("--")
                         else f"no X API bearer token: set {TOKEN_ENV} or pass --bearer_token_file")
    lines = [line for line in token.splitlines() if line.strip()]
    if len(lines) > 1:
        raise UsageError(f"{source} holds {len(lines)} lines; a bearer token is one line (the token "
                         "is not shown)")
    if token[:7].lower() == "bearer " or token[:7].lower() == "bearer\t":
        raise UsageError(f"{source} starts with \"Bearer\": give the token alone, without the scheme")
    if any(c.isspace() for c in token):
        raise UsageError(f"{source} has whitespace inside the token; a bearer token has none "
                         "(the token is not shown)")
    if any(not "!" <= c <= "~" for c in token):
        raise UsageError(f"{source} holds characters a bearer token cannot (it is printable ASCII: a copy "
                         "from a formatted document?); the token is not shown")
    if len(token) < MIN_TOKEN_CHARS:
        raise UsageError(f"{source} holds {len(token)} characters: too short for an X API bearer token "
                         "(a placeholder?)")
    return token


def read_token(token_file: str | None) -> str:
    """The bearer token from `token_file` or $X_BEARER_TOKEN, checked by check_token."""
    if not token_file:
        return check_token(os.environ.get(TOKEN_ENV, ""), TOKEN_ENV)
    source = "--bearer_token_file"
    if not os.path.isfile(token_file):
        raise UsageError(f"{source}: no such file")  # the path is not shown: it may be the token itself
    try:
        with open(token_file, "rb") as f:
            data = f.read(MAX_TOKEN_FILE_BYTES + 1)
        mode = os.stat(token_file).st_mode
    except OSError as e:
        raise UsageError(f"{source}: cannot read it ({e.strerror})") from None
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise UsageError(f"{source}: the file is over {MAX_TOKEN_FILE_BYTES // 1024} KiB, not a token file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{source}: the file is not text (UTF-8); the token is not shown") from None
    token = check_token(text.lstrip("\ufeff"), source)
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        print(f"pulse ingest: warning: {token_file} is accessible by other users (mode "
              f"{stat.S_IMODE(mode):04o}); run chmod 600 on it", file=sys.stderr)
    return token


def parse_args(argv: list[str]):
    parser = build_parser()
    known = set(parser.known_flags())
    for arg in argv:
        name = arg.split("=", 1)[0]
        if name.startswith("-") and name not in known and SECRET_FLAG.search(name):
            # Said without echoing the value: it is the secret.
            raise UsageError(f"the bearer token is never a flag value; set {TOKEN_ENV} or pass "
                             "--bearer_token_file")
    from connectors.feeds.publisher import check_topic
    args = parser.parse_args(argv)
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
    if args.api_url is not None and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", args.api_url):
        raise UsageError("--api_url must be an http:// or https:// URL (the value is not shown)")
    args.token = read_token(args.bearer_token_file)
    return args


def fail(prog: str, message: str, code: int, *secrets: str | None) -> int:
    """pipelines.cli.publish.fail, with `secrets` and the registered ones masked in `message`."""
    from connectors.feeds.x_api import SECRETS, Redactor
    redactor = Redactor()
    for secret in (*secrets, os.environ.get(TOKEN_ENV)):
        # Each part of a malformed token too; none so short that masking it would garble the message.
        for part in {secret or "", *(secret or "").split()}:
            if len(part.strip()) >= MIN_TOKEN_CHARS:
                redactor.add(part.strip())
    return _fail(prog, SECRETS.redact(redactor.redact(message)), code)


@contextlib.contextmanager
def guard_secret(token: str):
    """While the block runs: the token is masked in every log record (protect_secret, and
    warnings go through logging) and in the traceback of an exception that ends a thread."""
    from connectors.feeds.x_api import protect_secret, redact
    protect_secret(token)
    previous_hook = threading.excepthook

    def thread_hook(hook_args):
        text = "".join(traceback.format_exception(hook_args.exc_type, hook_args.exc_value,
                                                  hook_args.exc_traceback))
        print(f"Exception in thread {getattr(hook_args.thread, 'name', '?')}:\n{redact(text)}",
              file=sys.stderr, end="")

    threading.excepthook = thread_hook
    captured = getattr(logging, "_warnings_showwarning", None) is not None
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(captured)
        threading.excepthook = previous_hook


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
    try:
        with guard_secret(args.token):
            return _main(prog, args, clock, stop)
    except Exception:  # unexpected: the traceback, masked, and one line
        from connectors.feeds.x_api import redact
        print(redact(traceback.format_exc()), file=sys.stderr, end="")
        return fail(prog, "unexpected error (the traceback above)", EXIT_FAILED, args.token)


def _main(prog: str, args, clock, stop: threading.Event | None) -> int:
    from google.auth import exceptions as auth_exc

    from connectors.feeds.checkpoint import Checkpoint, CheckpointError
    from connectors.feeds.publisher import Publisher, PublishError
    from connectors.feeds.rate_limit import Backoff, Fatal, Stopped, SystemClock
    from connectors.feeds.x_api import Ingester, RecentSearch, make_client, search_limiter

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

    from connectors.feeds.publisher import Publisher, PublishError
    from connectors.feeds.rate_limit import Fatal
    from connectors.feeds.x_stream import FilteredStream, make_stream_client, stream_limiters

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

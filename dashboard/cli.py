"""`pulse dashboard`: serve the dashboard (dashboard/app.py) on this machine.

    pulse dashboard --output out                      # http://127.0.0.1:8501
    pulse dashboard --output my-proj:pulse --port 0   # BigQuery; 0 = any free port
    pulse dashboard --output out --address 0.0.0.0    # other machines too (a warning says so)

Bound to 127.0.0.1 unless --address says otherwise: the page reads every table and writes
labels, and Streamlit has no login. Only requests whose Host names this machine (or one of
--allowed_hosts) are answered, and only websockets opened by the dashboard's own page
(dashboard/guard.py): a page elsewhere, or a DNS name rebound to 127.0.0.1, gets nothing. Runs Streamlit's server in this process's place (exec),
so Ctrl+C stops it. A missing output directory is not an error (the job may not have started
yet: the page says so and looks again every few seconds); a BigQuery dataset that does not
exist is (one line, exit 2).
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from typing import Sequence

from connectors.query import sqlfiles
from pipelines.options import output_kind

APP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "app.py")
SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "server.py")
DEFAULT_PORT = 8501


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pulse dashboard", description="Serve the dashboard and review desk over a job's output.")
    p.add_argument("--output", default="out", help="the job's output: a directory (Parquet) or PROJECT:DATASET")
    p.add_argument("--address", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default %(default)s; 0 = any free port)")
    p.add_argument("--allowed_hosts", default="",
                   help="more host names the page may be reached under, comma-separated (a proxy's name); "
                        "this machine's own names are always allowed")
    p.add_argument("--refresh", type=float, default=5.0, help="seconds between re-reads of the tables (0 = never)")
    p.add_argument("--reviewer", default=None, help="the review desk's reviewer name (default: your login)")
    p.add_argument("--project", default=None, help="Google Cloud project for BigQuery queries")
    defaults = sqlfiles.ViewSettings()
    p.add_argument("--window_size", type=int, default=defaults.window_size, help="the job's --window_size")
    p.add_argument("--window_period", type=int, default=None, help="the job's --window_period, if it had one")
    p.add_argument("--review_threshold", type=float, default=defaults.review_threshold,
                   help="the job's --review_threshold")
    return p


def free_port(address: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def environment(args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    env.update({
        "PULSE_DASHBOARD_ALLOWED_HOSTS": ",".join(hosts(args)),
        "PULSE_DASHBOARD_OUTPUT": args.output,
        "PULSE_DASHBOARD_REFRESH": str(args.refresh),
        "PULSE_DASHBOARD_WINDOW_SIZE": str(args.window_size),
        "PULSE_DASHBOARD_REVIEW_THRESHOLD": str(args.review_threshold),
    })
    for name, value in (("REVIEWER", args.reviewer), ("PROJECT", args.project), ("WINDOW_PERIOD", args.window_period)):
        if value is not None:
            env[f"PULSE_DASHBOARD_{name}"] = str(value)
        else:
            env.pop(f"PULSE_DASHBOARD_{name}", None)
    return env


def hosts(args: argparse.Namespace) -> list[str]:
    from dashboard.guard import allowed_hosts

    return allowed_hosts(args.address, (args.allowed_hosts or "").split(","))


def streamlit_command(address: str, port: int, allowed: Sequence[str] = ()) -> list[str]:
    """Streamlit serving dashboard/server.py (the app behind the Host/Origin guard)."""
    command = [sys.executable, "-m", "streamlit", "run", SERVER,
               "--server.address", address, "--server.port", str(port), "--server.headless", "true",
               "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
               "--global.developmentMode", "false", "--client.toolbarMode", "viewer", "--theme.base", "light"]
    for host in allowed:
        command += ["--server.allowedHosts", host]
    return command


def check(args: argparse.Namespace) -> str | None:
    """The one-line error that stops the dashboard before it starts, if any."""
    if args.refresh < 0:
        return "--refresh cannot be negative"
    if args.reviewer is not None:
        from connectors.sinks.labels import check_reviewer

        try:
            check_reviewer(args.reviewer)
        except ValueError as e:
            return f"--reviewer: {e}"
    for host in (args.allowed_hosts or "").split(","):
        if host.strip() and (not host.strip().replace("-", "").replace(".", "").replace("*", "").isalnum()
                             or not host.isascii()):
            return f"--allowed_hosts: {host.strip()!r} is not a host name"
    if not 0 <= args.port <= 65535:
        return f"--port {args.port} is not a port number"
    try:
        sqlfiles.ViewSettings(args.window_size, args.window_period, args.review_threshold)
    except (ValueError, sqlfiles.SqlError) as e:
        return str(e)
    if output_kind(args.output) == "bigquery":
        from dashboard import data

        try:
            data.open_source(args.output, project=args.project).close()
        except data.SourceError as e:
            return str(e)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    problem = check(args)
    if problem:
        print(f"pulse dashboard: error: {problem}", file=sys.stderr)
        return 2
    if output_kind(args.output) == "parquet" and not os.path.isdir(args.output):
        print(f"pulse dashboard: warning: {args.output} does not exist yet; the page shows it once the job "
              "has written there", file=sys.stderr)
    if not is_loopback(args.address):
        print(f"pulse dashboard: warning: listening on {args.address}: anyone who can reach this machine can "
              "read every table and write labels (there is no login)", file=sys.stderr)
    try:
        port = args.port or free_port(args.address)
    except OSError as e:
        print(f"pulse dashboard: error: cannot listen on {args.address}: {e.strerror or e}", file=sys.stderr)
        return 2
    host = f"[{args.address}]" if ":" in args.address else args.address
    print(f"pulse dashboard: http://{host}:{port}/ (output {args.output}; Ctrl+C stops)", flush=True)
    os.execve(sys.executable, streamlit_command(args.address, port, hosts(args)), environment(args))
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())

"""`--run_for` drains a Dataflow job (JOB_STATE_DRAINING), never cancels it.

`drain_dataflow_job` goes through Beam's own Dataflow client (DataflowApplicationClient, the
google-cloud-dataflow REST transport) to a local HTTP server standing at `--dataflow_endpoint`,
which records what reaches the wire: the UpdateJob request for the job, asking for
JOB_STATE_DRAINING. What stays on paper: Dataflow's answer to it (no cloud here).

    .venv/bin/pytest tests/test_dataflow_drain.py -q
"""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from google.cloud.dataflow import JobState

from pipelines import sentiment_pipeline

pytestmark = pytest.mark.integration


@pytest.fixture
def dataflow_endpoint():
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            seen.append((self.command, self.path.split("?")[0], body))
            reply = json.dumps({"id": self.path.split("?")[0].rsplit("/", 1)[-1],
                                "currentState": "JOB_STATE_RUNNING",
                                "requestedState": body.get("requestedState", "")}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        do_PUT = do_GET = do_POST = _answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_run_for_drains_the_dataflow_job_through_beams_client(dataflow_endpoint):
    endpoint, seen = dataflow_endpoint
    options = PipelineOptions(["--project", "my-proj", "--region", "europe-west4", "--no_auth",
                               "--dataflow_endpoint", endpoint, "--temp_location", "gs://my-bucket/tmp"])
    sentiment_pipeline.drain_dataflow_job(options, "2026-12-03_04_05_06-123")
    [(method, path, body)] = seen
    assert (method, path) == ("PUT", "/v1b3/projects/my-proj/locations/europe-west4/jobs/2026-12-03_04_05_06-123")
    # The REST transport sends the enum's number: 7 is JOB_STATE_DRAINING (cancelling would be 5, JOB_STATE_CANCELLED).
    assert JobState(body["requestedState"]).name == "JOB_STATE_DRAINING" and set(body) == {"requestedState"}

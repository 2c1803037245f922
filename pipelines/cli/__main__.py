"""`python -m pipelines.cli ...` runs `pulse ...` (the console script is `pipelines.cli:main`).

    python -m pipelines.cli run --input data/sample_stream.jsonl --output out
"""
import sys

from pipelines.cli import main

sys.exit(main())

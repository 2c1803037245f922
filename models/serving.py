"""What every model handler shares: example text, its length for batching, and the devices.

handlers.py (the SavedModel path and the `--model` dispatcher), hf.py (BERT) and
tfx_serving.py (tfx-bsl) import this module; it imports none of them, so the three never
import each other in a circle (tests/test_models_imports.py checks the graph).
"""
from __future__ import annotations

import logging

_LOG = logging.getLogger(__name__)


def as_text(example) -> str:
    """A model example (`str`, or UTF-8 `bytes`) -> str; anything else is a TypeError."""
    if isinstance(example, str):
        return example
    if isinstance(example, bytes):
        return example.decode("utf-8", errors="replace")
    raise TypeError(f"model examples must be str, got {type(example).__name__}")


def text_length(example) -> int:
    """Example `str` or keyed `(key, str)` -> its length in characters (Beam's length-aware batching).

    KeyedModelHandler hands BatchElements the keyed tuples, so the text is the last item.
    """
    if isinstance(example, tuple):
        example = example[-1]
    return len(example) if isinstance(example, (str, bytes)) else 0


def configure_devices() -> str:
    """Turn on GPU memory growth (where a GPU exists) and return the device to place a model on.

    Called by every TensorFlow model's `load_model()` before the model is built. Without
    memory growth the first model takes all GPU memory, which starves a second copy (Beam's
    `model_copies`), another SDK process on the same worker, or the tokenizer's tensors.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            # The GPU was initialised before this call (another model in this process got
            # there first, with growth already on): it can no longer be changed.
            _LOG.debug("memory growth already fixed for %s", gpu.name)
    return "/GPU:0" if gpus else "/CPU:0"

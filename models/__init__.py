"""The model contract, the bundled model, its training, and the model handlers.

The bottom layer: imports nothing of the project outside models/ (tests/test_layout.py enforces it).

Serving uses Keras 2 (the `tf-keras` package): Keras 3, the default Keras of
TensorFlow 2.16+, cannot load a TensorFlow SavedModel with `load_model`, which is
what Beam's `TFModelHandlerTensor` calls. The switch must be set before TensorFlow
is first imported, so every module that imports TensorFlow imports this package first.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import warnings

# tensorflow_hub (imported by Beam's TensorFlow handler) still imports pkg_resources; the
# deprecation notice is about that package, not about anything a user of this job can change.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

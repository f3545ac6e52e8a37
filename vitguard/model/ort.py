"""onnxruntime sessions configured the same way for every ONNX backend."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["create_session"]


def create_session(
    model: Path | bytes, *, threads: int | None = None, spinning: bool = False,
    config: Mapping[str, str] | None = None,
) -> Any:
    """An ``InferenceSession`` with full graph optimisation, CUDA when present, and by default no busy-waiting.

    Intra-op threads normally spin between parallel sections; on a CPU shared with decode threads and other
    workers the spinning steals the very cores the next section needs. Measured on the 2-core dev machine
    under load: ~1.5x the batch throughput with spinning off. The pool also spins for about 50 ms after each
    run (a core's worth of CPU), and one image at idle is no faster for it (``bench/ort_spinning.py``);
    ``ModelSettings.ort_spinning`` turns it on for whoever measures otherwise. ``threads`` None keeps
    onnxruntime's default (one per physical core); ``config`` adds session config entries (name -> value).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    for name, value in (config or {}).items():
        options.add_session_config_entry(name, value)
    if threads is not None:
        options.intra_op_num_threads = threads
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=options, providers=providers or ["CPUExecutionProvider"])

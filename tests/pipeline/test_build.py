"""Wiring the runner: batch sizes that follow the model's device."""

from __future__ import annotations


def test_batches_follow_the_device_unless_the_operator_sized_them() -> None:
    from types import SimpleNamespace

    from vitguard.pipeline.runtime.build import sized_for_device
    from vitguard.settings import load_settings

    cuda = SimpleNamespace(preferred_batch_size=256)
    batch, in_flight = sized_for_device(load_settings(), cuda)
    assert (batch.max_size, in_flight, batch.request_max_size) == (256, 512, 0)  # no short passes on CUDA
    batch, _ = sized_for_device(load_settings(batch={"request_max_size": 32}), cuda)
    assert (batch.max_size, batch.request_max_size) == (256, 32)  # short passes the operator asked for
    batch, in_flight = sized_for_device(load_settings(batch={"max_size": 32}, worker={"max_in_flight": 40}), cuda)
    assert (batch.max_size, in_flight) == (32, 40)  # set by the operator: kept
    batch, in_flight = sized_for_device(load_settings(), SimpleNamespace(preferred_batch_size=16))  # torch on CPU
    assert (batch.max_size, in_flight, batch.request_max_size) == (16, 64, 8)
    batch, _ = sized_for_device(load_settings(), object())  # ONNX backends have no preference
    assert batch.max_size == 16

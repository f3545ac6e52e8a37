"""The stages, in flow order: what happens to one event or one group, typed in and out, no ordering or threads.

Front half, a batch of records at a time (:mod:`~vitguard.pipeline.runtime.front` runs it, and
:mod:`~vitguard.pipeline.runtime.intake` makes the batches):

1. :mod:`~vitguard.pipeline.stages.ingest`: a raw message -> a valid event, or its dead letter;
2. :mod:`~vitguard.pipeline.stages.fetch`: the image bytes by reference, hashed;
3. :mod:`~vitguard.pipeline.stages.expand`: a still is one frame; an animation or a video its sampled frames;
4. :mod:`~vitguard.pipeline.stages.decode`: bytes -> the model's input tensor and the PDQ hash;
   :mod:`~vitguard.pipeline.stages.decode_batch`: the same for a batch of images, a few pool jobs at a time.

A forward pass (:mod:`~vitguard.pipeline.runtime.runner`'s batch loop):

5. :mod:`~vitguard.pipeline.stages.infer`: one pass for a micro-batch of frames;
6. :mod:`~vitguard.pipeline.stages.reduce`: an animation's or a video's frames -> one item (its worst frame).

Back half, per group (:mod:`~vitguard.pipeline.runtime.completion`):

7. :mod:`~vitguard.pipeline.stages.match`: PDQ hashes against the hash banks;
8. :mod:`~vitguard.pipeline.stages.index`: near-duplicate search and upsert (clusters:
   :mod:`~vitguard.pipeline.stages.clustering`, pure);
9. :mod:`~vitguard.pipeline.stages.alert`: waves and near-duplicate alerts;
10. :mod:`~vitguard.pipeline.stages.emit`: encode each output to fit its topic, publish, re-send the unacknowledged.

The values passed between them are in :mod:`~vitguard.pipeline.results` and :mod:`~vitguard.pipeline.types`;
shared helpers (dead letters, verdicts, answer keys) in :mod:`~vitguard.pipeline.core`.
"""

"""What runs the stages: ordering, concurrency, batching and the failure policy.

* :mod:`~vitguard.pipeline.runtime.runner`: the entry point; front halves, forward passes, back halves in order;
* :mod:`~vitguard.pipeline.runtime.front`: the front half of one event (stages 1-4);
* :mod:`~vitguard.pipeline.runtime.batcher`: the ready queue and what the next forward pass holds;
* :mod:`~vitguard.pipeline.runtime.completion`: the back half of a group (stages 7-10, then Redis learns);
* :mod:`~vitguard.pipeline.runtime.pools`: the named thread pools (decode, inference, Milvus);
* :mod:`~vitguard.pipeline.runtime.coalesce`: concurrent point lookups sharing one round trip;
* :mod:`~vitguard.pipeline.runtime.failure`: each dependency's failure policy, in one place;
* :mod:`~vitguard.pipeline.runtime.build`: a runner wired to the services the settings name;
* :mod:`~vitguard.pipeline.runtime.sinks`: output sinks outside Faust (replay, tools, tests).
"""

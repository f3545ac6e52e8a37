"""What a developer runs on their own machine: ``vitguard dev up`` / ``dev down`` (:mod:`vitguard.dev.stack`).

The services themselves (the embedded Kafka-compatible broker, a private ``redis-server``) are started by
:mod:`vitguard.testing.services`, the same code the demo and the tests use. Nothing here is imported by the
worker.
"""

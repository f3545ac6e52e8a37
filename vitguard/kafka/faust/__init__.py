"""Every override of Faust and aiokafka, in one place, each with the upstream defect it answers.

Seen in faust-streaming 0.15.3 with aiokafka 0.14.0 (the versions in ``requirements/*.lock``). When either
is upgraded, run the tests named below first: each fails without its override. :func:`consumer._check_driver`
refuses, at import, a driver whose hooks these overrides need are gone, and the consumer thread refuses to start
when the fetch wait did not reach aiokafka's live fetcher.

1. **Defect**: the aiokafka driver hard-codes ``fetch_max_wait_ms=1500``: a quiet partition's record waits up to
   1.5 s.
   **Override**: :class:`~vitguard.kafka.faust.consumer.FetchWaitTransport` sets the configured wait.
   **Test**:
   ``tests/kafka/test_kafka_faust_consumer.py::test_live_aiokafka_consumer_fetches_with_the_configured_wait``.
2. **Defect**: ``pause_partitions`` shrinks in place the set ``getmany`` is iterating: a pause mid-delivery drops
   the rest of the fetch, later taken for a gap and committed past.
   **Override**: :meth:`FetchWaitConsumer.pause_partitions
   <vitguard.kafka.faust.consumer.FetchWaitConsumer.pause_partitions>` replaces the set.
   **Test**:
   ``tests/integration/test_failure_model.py::test_pausing_partitions_leaves_a_fetch_in_progress_its_partitions``.
3. **Defect**: ``Consumer._seek`` calls aiokafka from the event loop while the consumer thread iterates
   ``fetched_records``: ``KeyError``, the fetcher crashes.
   **Override**: :meth:`FetchWaitConsumer._seek <vitguard.kafka.faust.consumer.FetchWaitConsumer._seek>` seeks on
   the consumer thread, with a deadline (a stuck thread is fatal).
   **Test**: ``test_kafka_faust_consumer.py::test_seeks_from_the_event_loop_never_race_the_fetcher``,
   ``::test_a_seek_the_consumer_thread_never_carries_out_is_fatal_not_a_stall``.
4. **Defect**: the drain loop's read offset drops re-fetched records as old after a seek back, and guesses gaps
   that commits then pass.
   **Override**: :class:`~vitguard.kafka.faust.consumer.UntrackedReadOffsets` (no read offset kept); ``_add_gap``
   ignored, :meth:`accept_gap <vitguard.kafka.faust.consumer.FetchWaitConsumer.accept_gap>` only for a hole re-
   fetched empty.
   **Test**:
   ``tests/integration/test_failure_model.py::test_records_re_fetched_after_a_seek_back_are_delivered_and_never_committed_past``.
5. **Defect**: the commit's gap check is skipped for a group with no committed offset: an abandoned message can be
   committed past; the stream's automatic ack makes a message committable before it is answered.
   **Override**: :class:`~vitguard.kafka.faust.offsets.OffsetTracker` acks per partition only the answered prefix;
   the agent ``incref``-s every message.
   **Test**:
   ``tests/consumers/test_agent_loop.py::test_an_abandoned_event_is_never_committed_past_even_with_no_committed_offset``.
6. **Defect**: at a generation change Faust drops fetched, undelivered records and does not always seek a
   partition it keeps.
   **Override**: :func:`~vitguard.kafka.faust.positions.expect_from_committed` tells the tracker each partition's
   start; a delivery past it is a hole, re-fetched (:func:`~vitguard.kafka.faust.positions.refetch`).
   **Test**: ``test_agent_loop.py::test_a_hole_in_the_delivery_is_re_fetched_and_nothing_past_it_is_acked``,
   ``::test_an_assignment_tells_the_tracker_each_committed_offset_or_beginning_and_seeks_nothing``.
7. **Defect**: records dropped at a partition's end (rebalance, pause) are never revealed by a later record.
   **Override**: :func:`~vitguard.kafka.faust.positions.check_tails` seeks an idle partition back once.
   **Test**: ``test_agent_loop.py::test_an_idle_agent_re_fetches_records_dropped_at_the_end_of_a_partition``.
8. **Defect**: a resume after a pause keeps a fetch position past records dropped by the pause.
   **Override**: :func:`~vitguard.kafka.faust.positions.pause` rewinds to the committed offsets on resume
   (:func:`~vitguard.kafka.faust.positions.rewind_to_committed`).
   **Test**:
   ``test_agent_loop.py::test_a_resume_rewinds_every_partition_to_its_committed_offset_or_its_beginning``.
9. **Defect**: aiokafka refuses a seek on a partition a rebalance just revoked (``IllegalStateError``).
   **Override**: the seek is logged and dropped (its next owner reads from the committed offset).
   **Test**:
   ``test_agent_loop.py::test_a_seek_refused_after_a_rebalance_neither_stops_the_worker_nor_the_tail_check``.
10. **Defect**: the agent supervisor restarts a crashed agent on a consumer whose position is past the abandoned
   events.
   **Override**: the agent (:func:`vitguard.consumers.app.consume`) treats a restart as fatal.
   **Test**: ``test_agent_loop.py::test_a_restarted_agent_does_not_run_on_but_stops_the_worker``.

Modules: :mod:`~vitguard.kafka.faust.consumer` (the transport, consumer thread and consumer),
:mod:`~vitguard.kafka.faust.offsets` (the offset tracker), :mod:`~vitguard.kafka.faust.positions` (positions
after rebalances, pauses and holes).
"""

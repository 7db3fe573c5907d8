"""The shared bus package: everything every service does the same way on NATS.

connect (from settings), the protobuf codec with ``Desk-Type`` headers, subject names, JetStream
streams and KV buckets, NATS micro registration, structlog set-up, the one service lifecycle, and
(in ``desk.bus.testing``) the helper that starts a real nats-server for tests.

JetStream consumption, written once: ``desk.bus.kv.KvFollower`` (follow a bucket, the current values
first), ``desk.bus.pull.DurablePull`` (a durable pull consumer through reconnects, elections and a
deleted consumer) and ``desk.bus.replay`` (``replay_to_last`` a stream, then ``follow`` it). Import
them from their modules: this package imports nothing, so the SDK's pure modules stay light.
"""

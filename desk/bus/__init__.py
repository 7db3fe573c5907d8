"""The shared bus package: everything every service does the same way on NATS.

connect (from settings), the protobuf codec with ``Desk-Type`` headers, subject names, JetStream
streams and KV buckets, NATS micro registration, structlog set-up, the one service lifecycle, and
(in ``desk.bus.testing``) the helper that starts a real nats-server for tests.
"""

"""The ledger: the desk's books (orders, fills, positions, cash, P&L) in SQLite, single writer.

The accounting and the check of execution reports into bookings are the pure engine's
(:mod:`desk.core.books`); ``queries`` values books for the query endpoints. The SQLite side:
``store`` opens the file (two connections, each on a thread of its own: ``connection``), ``schema``
holds the DDL and migrations, ``writer`` the single writer (one transaction per batch), ``reads`` the
queries, ``rows`` what they hand out; ``service`` is the async shell on NATS.
"""

"""The ledger: the desk's books (orders, fills, positions, cash, P&L) in SQLite, single writer.

The accounting and the check of execution reports into bookings are the pure engine's
(:mod:`desk.core.books`); ``queries`` values books for the query endpoints, ``store`` is the SQLite
side, ``service`` the async shell on NATS.
"""

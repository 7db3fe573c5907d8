"""The ledger: the desk's books (orders, fills, positions, cash, P&L) in SQLite, single writer.

``books`` is the pure accounting, ``reports`` turns execution reports into validated bookings,
``queries`` values books for the query endpoints, ``store`` is the SQLite side, ``service`` the
async shell on NATS.
"""

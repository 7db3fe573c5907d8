"""The ledger file's schema: the DDL, the migrations, the schema version and the upgrade on open.

``MIGRATIONS[i]`` takes a ledger.db from schema version ``i`` to ``i + 1``; a file of any earlier
release is brought to :data:`SCHEMA_VERSION` by the migrations it lacks, in one transaction, when the
store opens it. A released migration is never edited (a file it made must stay readable byte for
byte); a change of schema appends one. A file newer than this code is refused.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

# Each entry migrates the schema from version i to i + 1; append, never edit a released one.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE strategies (
            strategy_id TEXT PRIMARY KEY,
            member_id TEXT NOT NULL DEFAULT '',
            initial_cash TEXT NOT NULL,
            name TEXT NOT NULL DEFAULT '',
            updated_ns INTEGER NOT NULL DEFAULT 0)""",
        # initial_cash is kept on the account too: the cash it was opened with, so a spec arriving
        # after the first fill (or changing the initial cash) re-bases cash by the difference.
        """CREATE TABLE accounts (
            strategy_id TEXT PRIMARY KEY,
            member_id TEXT NOT NULL DEFAULT '',
            initial_cash TEXT NOT NULL,
            cash TEXT NOT NULL,
            realized_pnl TEXT NOT NULL DEFAULT '0',
            fees TEXT NOT NULL DEFAULT '0',
            updated_ns INTEGER NOT NULL DEFAULT 0)""",
        """CREATE TABLE orders (
            order_id TEXT PRIMARY KEY,
            client_order_id TEXT NOT NULL,
            strategy_id TEXT NOT NULL REFERENCES accounts(strategy_id),
            member_id TEXT NOT NULL DEFAULT '',
            symbol TEXT NOT NULL DEFAULT '',
            side TEXT NOT NULL DEFAULT '',
            type TEXT NOT NULL DEFAULT '',
            tif TEXT NOT NULL DEFAULT '',
            qty TEXT NOT NULL DEFAULT '',
            notional TEXT NOT NULL DEFAULT '',
            limit_price TEXT NOT NULL DEFAULT '',
            stop_price TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL DEFAULT '',
            filled_qty TEXT NOT NULL DEFAULT '0',
            avg_price TEXT NOT NULL DEFAULT '',
            venue TEXT NOT NULL DEFAULT '',
            text TEXT NOT NULL DEFAULT '',
            created_ns INTEGER NOT NULL,
            updated_ns INTEGER NOT NULL)""",
        "CREATE INDEX orders_by_strategy ON orders(strategy_id, updated_ns)",
        "CREATE INDEX orders_by_time ON orders(updated_ns)",
        """CREATE TABLE order_events (
            execution_id TEXT PRIMARY KEY,
            order_id TEXT NOT NULL REFERENCES orders(order_id),
            exec_type TEXT NOT NULL,
            status TEXT NOT NULL,
            payload BLOB NOT NULL,
            event_ns INTEGER NOT NULL)""",
        "CREATE INDEX order_events_by_order ON order_events(order_id, event_ns)",
        """CREATE TABLE fills (
            execution_id TEXT PRIMARY KEY,
            order_id TEXT NOT NULL REFERENCES orders(order_id),
            client_order_id TEXT NOT NULL,
            strategy_id TEXT NOT NULL REFERENCES accounts(strategy_id),
            member_id TEXT NOT NULL DEFAULT '',
            symbol TEXT NOT NULL,
            side TEXT NOT NULL,
            qty TEXT NOT NULL,
            price TEXT NOT NULL,
            fee TEXT NOT NULL,
            venue TEXT NOT NULL DEFAULT '',
            event_ns INTEGER NOT NULL)""",
        "CREATE INDEX fills_by_strategy ON fills(strategy_id, event_ns)",
        "CREATE INDEX fills_by_time ON fills(event_ns)",
        """CREATE TABLE positions (
            strategy_id TEXT NOT NULL REFERENCES accounts(strategy_id),
            symbol TEXT NOT NULL,
            qty TEXT NOT NULL,
            avg_cost TEXT NOT NULL,
            cost_basis TEXT NOT NULL,
            realized_pnl TEXT NOT NULL,
            fees TEXT NOT NULL,
            updated_ns INTEGER NOT NULL,
            PRIMARY KEY (strategy_id, symbol))""",
        """CREATE TABLE equity_snapshots (
            strategy_id TEXT NOT NULL,
            ts_ns INTEGER NOT NULL,
            equity TEXT NOT NULL,
            cash TEXT NOT NULL,
            realized TEXT NOT NULL,
            unrealized TEXT NOT NULL,
            PRIMARY KEY (strategy_id, ts_ns))""",
        "CREATE INDEX equity_by_time ON equity_snapshots(ts_ns)",
    ]
]

SCHEMA_VERSION = len(MIGRATIONS)


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the file on ``db`` (the writer connection, autocommit) to :data:`SCHEMA_VERSION` in one transaction."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = db.execute("SELECT version FROM schema_version").fetchone()
        version = int(row[0]) if row else 0
        if row is None:
            db.execute("INSERT INTO schema_version (version) VALUES (0)")
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{path} has schema version {version}, newer than this ledger ({SCHEMA_VERSION})")
        for statements in MIGRATIONS[version:]:
            for statement in statements:
                db.execute(statement)
        db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def schema_version(db: sqlite3.Connection) -> int:
    """The file's schema version (0 for a file without the table's row)."""
    row = db.execute("SELECT version FROM schema_version").fetchone()
    return int(row[0]) if row else 0

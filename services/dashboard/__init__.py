"""The dashboard: the club's web page (leaderboard, strategy pages, desk health) with live updates.

``metrics`` is the pure performance math (drawdown, Sharpe, benchmark), ``auth`` the operator
session and CSRF tokens, ``reader`` the bus queries (ledger, orchestrator, router, micro), ``live``
the NATS-to-browser fan-out (server-sent events), ``pages`` the Starlette routes by page, ``app``
the app that assembles them and ``service`` the async shell that serves it with uvicorn inside the
service's event loop.
"""

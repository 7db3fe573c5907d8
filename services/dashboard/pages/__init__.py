"""The dashboard's routes, one module per page; :func:`services.dashboard.app.create_app` assembles them.

``site`` is what every page shares (the reader, the live feed, the operator auth, the member
sessions, the templates and the session context a template gets); ``leaderboard``, ``member``,
``strategy`` and ``desk`` are the pages, each with its JSON under ``/api``; ``events`` the
server-sent events; ``login`` the operator's login and logout (with the throttle); ``operator`` the
operator actions (kill switch, start/stop); ``member_login`` a member's login, logout and controls
(over the member's own NATS connection).
"""

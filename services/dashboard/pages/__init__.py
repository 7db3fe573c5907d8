"""The dashboard's routes, one module per page; :func:`services.dashboard.app.create_app` assembles them.

``site`` is what every page shares (the reader, the live feed, the operator auth, the templates and
the operator context a template gets); ``leaderboard``, ``strategy`` and ``desk`` are the three
pages, each with its JSON under ``/api``; ``events`` the server-sent events; ``login`` the operator's
login and logout (with the throttle); ``operator`` the operator actions (kill switch, start/stop).
"""

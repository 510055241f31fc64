"""Usage: the ledger of what each answer used and cost (``ledger``), its SQLite form and the
write-behind writer (``sqlite``, ``writer``), and the budgets that steer routing (``budgets``).

May import: the foundation modules, ``models``, ``sessions.records``, ``sessions.store`` and
``request.routing`` (budgets screen a routing plan). Never the client or the CLI.
"""

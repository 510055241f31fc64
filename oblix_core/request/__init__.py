"""The request path: one ``execute``/``stream`` call end to end. ``context`` is the request
record; ``history`` and ``warm`` turn a session into model messages that fit; ``routing``
orders the candidates and screens them (fit, cooling); ``execution`` runs them with retries,
fallback and cooldown; ``conversation`` ties it together and stores the exchange; ``engine``
is what the path needs from a client; ``idempotency`` answers a keyed request once. Each
decision has one home here: ``privacy.decide`` (is the request local-only, and why),
``history.fit_to_window`` (does the history fit a model: once per plan), ``budgets``
(``BudgetGuard.decide``: is a budget spent, once per request); docs/architecture.md lists
them with who asks.

May import: the foundation modules, ``agents``, ``models``, ``sessions``, ``usage``,
``documents`` (retrieval), ``plugins.hookspecs``. Never the client, the terminal or the CLI.
"""

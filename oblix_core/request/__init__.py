"""The request path: one ``execute``/``stream`` call end to end. ``context`` is the request
record; ``history`` and ``warm`` turn a session into model messages that fit; ``privacy`` is the
one home of the local-only rule; ``routing`` orders the candidates; ``execution`` runs them with
retries, fallback and cooldown; ``conversation`` ties it together and stores the exchange;
``engine`` is what the path needs from a client.

May import: the foundation modules, ``agents``, ``models``, ``sessions``, ``usage``,
``plugins.hookspecs``. Never the client, the terminal or the CLI.
"""

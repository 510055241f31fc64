"""Models: the model types, the backend interface every model plugin implements, the request
and stream records a backend sees, what HTTP backends share (transport), and model health
(cooldowns, circuit breaker, shared health).

May import: the foundation modules (``errors``, ``secrets``, ``fileio``, ``validation``).
Nothing here knows about sessions, routing, usage or the command line.
"""

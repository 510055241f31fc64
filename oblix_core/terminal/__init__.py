"""The terminal side of the SDK: answers printed as they stream and Ctrl-C (``console``), the
interactive chat loop (``chat``, ``chat_input``) and a routing decision as text (``explain``).
``execute(stream=True)``/``chat=True`` use it; it loads neither click nor the CLI.

May import: the foundation modules, ``request``, ``sessions`` and (for chat) the client.
"""

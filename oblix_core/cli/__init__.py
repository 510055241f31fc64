"""The ``oblix`` command line (click): ``main`` builds the group and loads plugin commands;
one module per family of commands (``run``, ``sessions``, ``templates``, ``usage``,
``config``), with ``common``, ``tables`` and ``files`` shared between them.

May import anything in the core; nothing in the core imports it.
"""

"""Usage: the ledger of what each answer used and cost (``ledger``), its SQLite form and the
write-behind writer (``sqlite``, ``writer``), token counts from endpoints checked in one place
(``counts``), what a streamed answer spent however it ended (``spending``) and the process's
budget gate (``gate``). The budget *decision* lives with the request path
(:mod:`oblix_core.request.budgets`).

May import: the foundation modules, ``models`` and ``sessions``. Never the request path, the
client or the CLI.
"""

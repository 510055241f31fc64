"""Sessions: the records and their JSON shapes (``records``), the store interface every
session-store plugin implements (``store``), the sessions API of the reference document
(``api``), exports/imports/copies/merges (``transfer``) and migration between stores.

May import: the foundation modules, ``models`` (health stores), ``request.privacy`` for the
local-only rule, and ``usage`` (the ledger a store may provide). Never the client or the CLI.
"""

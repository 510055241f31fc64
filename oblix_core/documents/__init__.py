"""Documents: the parts of retrieval and what Oblix does with them.

Owns the three part interfaces (``parts``: :class:`Embedder`, :class:`DocumentIndex`,
:class:`DocumentReader`), the records they pass (``records``), chunking on structure
(``chunking``), directory walking with ignore rules (``walking``), sync by content hash
(``sync``), hybrid ranking (``ranking``), workspaces and connectors (``library``) and the
retrieval step a request calls once (``retrieval``).

May import: the foundation modules (``errors``, ``secrets``, ``fileio``, ``validation``),
``agents``, ``models``, ``plugins.hookspecs``, ``sessions``. No plugin library (numpy,
sqlite extensions, llama.cpp): the first-party parts live in ``plugins/oblix_docs`` and
``plugins/oblix_pgvector``.
"""

"""Configuration: where Oblix keeps its data and ``config.toml`` read and validated once, by
the settings classes themselves (``settings``; their field rules live in ``oblix_core.fields``),
changed safely (``write``), saved prompt templates (``templates``), and notices said once per
home (``notices``).

May import: the foundation modules and the settings classes of ``request`` and ``usage``.
"""

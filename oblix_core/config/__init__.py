"""Configuration: where Oblix keeps its data and ``config.toml`` read and validated once
(``settings``), changed safely (``write``), and saved prompt templates (``templates``).

May import: the foundation modules and the settings classes of ``request`` and ``usage``.
"""

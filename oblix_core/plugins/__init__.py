"""Plugins: the hook specifications (``hookspecs``), optional dependencies of plugins declared
up front (``dependencies``) and the registry that loads entry points of group ``oblix``,
applies the allow/deny lists and keeps what plugins registered (``registry``).

May import: the foundation modules, ``agents``, ``models``, ``sessions``, ``usage``, ``request``
(for the types the hooks pass). The command line and the client are above it.
"""

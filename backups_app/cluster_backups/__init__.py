"""Cluster backups: the encrypted configuration backups systems upload over the collect
API, their retention and quota, and their staff pages.

Layers: ``models`` ← ``selectors`` ← ``services`` (with ``throttle``) ← ``api`` ← ``admin``.
"""

"""Service backups: backups, restores and restore drills of the services Cutover runs on
(its database, its folders, its own data), through pluggable ``adapters``.

Layers: ``models`` ← ``selectors`` ← ``services`` ← ``restore``, ``schedules`` ← ``tasks``,
``api``, ``admin``.
"""

"""ZFS snapshot policies and pull replication.

The pieces that need no database live here: names (``names``), the commands and how they
are run locally or over SSH (``commands``, ``runner``), the parsers of ZFS's output
(``parsers``), the pruning and replication planners (``planning``), capability detection
(``capabilities``) and the pull pipeline (``pipeline``). The Django side builds on them,
in layers: ``models`` ← ``selectors`` ← ``hosts`` ← ``services`` ← ``tasks``, ``admin``,
``views``, ``metrics`` and the commands.
"""

"""Models, statistics and the report over tidy tables, in three layers that only look down: ``models/`` (fitted
estimators and their maths), ``stats/`` (statistics), ``report/`` (tables, figures, HTML pages), over the input
checks of :mod:`.inputs`. Imports only the leaf modules of :mod:`p53hcc.tools` (errors, io, schema)."""

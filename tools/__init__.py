"""Everything around the models: cohort, synthetic cohort, preprocessing, radiomics, DL arms, pipeline, export,
the MONAI Deploy runtime, CLI.

Stage packages, in data-flow order (each imports only packages before it, plus the leaf modules
:mod:`~p53hcc.tools.errors`, :mod:`~p53hcc.tools.io`, :mod:`~p53hcc.tools.schema`, :mod:`~p53hcc.tools.logs`,
:mod:`~p53hcc.tools.parallel`):
:mod:`~p53hcc.tools.cohort` -> :mod:`~p53hcc.tools.preprocessing` -> :mod:`~p53hcc.tools.radiomics` |
:mod:`~p53hcc.tools.dl` -> :mod:`~p53hcc.tools.pipeline` -> :mod:`~p53hcc.tools.export` ->
:mod:`~p53hcc.tools.deploy` -> :mod:`~p53hcc.tools.cli`. See ``docs/architecture.md``.
"""

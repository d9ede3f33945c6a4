"""Models and statistics over tidy tables: clinical, radiomics, FF head and combined models, cross-fitting,
statistics, paper tables, figures, nomogram and the HTML report. Imports only the leaf modules of
:mod:`p53hcc.tools` (errors, io, schema)."""

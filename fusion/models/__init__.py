"""Fitted models and their maths: the clinical, radiomics, FF head and combined models (scikit-learn estimators),
ComBat harmonisation, out-of-fold and nested scores, the nomogram's points scale. Never imports
:mod:`p53hcc.fusion.report`."""

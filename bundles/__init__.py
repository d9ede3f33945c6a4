"""The MONAI bundles of the two DL arms (``p53_mc``, ``p53_ff``), shipped as package data.

Find them with :func:`p53hcc.tools.dl.bundle.bundle_dir`; nothing here is imported by the bundles themselves.
"""

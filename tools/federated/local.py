"""An in-process federation: the sites' handlers called directly, with the same ledger as FLARE's.

For the centralised (one site holding everybody) and site-alone arms of the benchmark, and for quick tests of the
protocol; the study itself runs through FLARE (:mod:`.job`).
"""
from __future__ import annotations

import json

import numpy as np

from p53hcc.tools.federated.server import Federation, Reply, encode
from p53hcc.tools.federated.site import Site


class LocalFederation(Federation):
    """The sites of this process (``{name: Site}``)."""

    def __init__(self, sites: dict[str, Site], keep_values: bool = True):
        super().__init__()
        self.site_objects = sites
        self.sites = list(sites)
        self.keep_values = keep_values

    def broadcast(self, task: str, payload: dict, arrays: dict[str, np.ndarray] | None = None) -> dict[str, Reply]:
        payload = json.loads(encode(payload))  # what a site receives is what survives the wire
        out = {}
        for name, site in self.site_objects.items():
            reply, back = site.handle(task, payload, dict(arrays or {}))
            reply = json.loads(encode(reply))
            self.record(task, name, reply, back, keep=self.keep_values and not task.startswith("dl_"))
            out[name] = (reply, back)
        return out

"""The FLARE server side: a ``ModelController`` whose ``run`` is the federated study (:func:`.server.run_server`),
each broadcast one FLARE task to every site (``send_model_and_wait``), every reply recorded in the ledger."""
from __future__ import annotations

import json

import numpy as np
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.workflows.model_controller import ModelController

from p53hcc.tools.errors import P53hccError
from p53hcc.tools.federated.server import Federation, Reply, encode, run_server

PAYLOAD = "__payload__"


def pack(payload: dict, arrays: dict[str, np.ndarray] | None) -> dict:
    """FLModel params of a message: the arrays as they are, the payload as one JSON string."""
    return {**(arrays or {}), PAYLOAD: encode(payload).decode()}


def unpack(params: dict | None) -> tuple[dict, dict[str, np.ndarray]]:
    params = dict(params or {})
    payload = json.loads(params.pop(PAYLOAD, "{}"))
    return payload, {k: np.asarray(v) for k, v in params.items()}


class FlareFederation(Federation):
    """Broadcasts through a FLARE controller."""

    def __init__(self, controller: ModelController, sites: list[str]):
        super().__init__()
        self.controller, self.sites = controller, list(sites)

    def broadcast(self, task: str, payload: dict, arrays: dict[str, np.ndarray] | None = None) -> dict[str, Reply]:
        results = self.controller.send_model_and_wait(task_name="p53hcc", targets=self.sites,
                                                      data=FLModel(params=pack(payload, arrays), meta={"task": task}))
        out = {}
        for res in results:
            site = res.meta.get("site")
            reply, back = unpack(res.params)
            if "error" in reply:
                msg = str(reply["error"])
                raise P53hccError(msg if msg.startswith(f"site {site}") else f"site {site}: {msg}")
            self.record(task, site, reply, back, keep=not task.startswith("dl_"))
            out[site] = (reply, back)
        missing = set(self.sites) - set(out)
        if missing:
            raise P53hccError(f"task {task}: no reply from {sorted(missing)}")
        return out


class StudyController(ModelController):
    """Runs the federated study (``cfg``: the resolved study config; ``fl``: the federated settings; ``out``: the
    server's output folder; ``sites``: the client names)."""

    def __init__(self, cfg: dict, fl: dict, out: str, sites: list[str], task_check_period: float = 0.5):
        super().__init__(task_check_period=task_check_period)
        self.cfg, self.fl, self.out, self.site_names = cfg, fl, out, list(sites)

    def run(self) -> None:
        fed = FlareFederation(self, self.site_names)
        try:
            run_server(fed, self.cfg, self.fl, self.out)
        finally:
            self.send_model_and_wait(task_name="p53hcc", targets=self.site_names,
                                     data=FLModel(params=pack({}, None), meta={"task": "stop"}))

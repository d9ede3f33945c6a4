"""The FLARE client script of a site (Client API): receive a task, let :class:`.site.Site` answer, send the reply.

Runs inside the site's FLARE client. The site's own cohort CSV comes from ``--cohort`` (the simulator) or the
environment variable ``P53HCC_SITE_COHORT`` (a real deployment); its work folder from ``--work`` or
``P53HCC_SITE_WORK`` (default: ``p53hcc-federated`` beside the CSV). The study configuration travels with the
job (in the server's first task), so every site runs the same settings.
"""
from __future__ import annotations

import argparse
import logging
import os
import traceback
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    import nvflare.client as flare

    from p53hcc.tools.federated.controller import pack, unpack
    from p53hcc.tools.federated.site import Site

    parser = argparse.ArgumentParser()
    parser.add_argument("--cohort", default=os.environ.get("P53HCC_SITE_COHORT"))
    parser.add_argument("--work", default=os.environ.get("P53HCC_SITE_WORK"))
    args, _ = parser.parse_known_args(argv)
    flare.init()
    name = flare.get_site_name()
    if not args.cohort:
        raise SystemExit(f"site {name}: no cohort; pass --cohort or set P53HCC_SITE_COHORT")
    work = Path(args.work or Path(args.cohort).resolve().parent / "p53hcc-federated")
    logging.getLogger("p53hcc").setLevel(logging.INFO)
    site = None
    while flare.is_running():
        model = flare.receive()
        if model is None:
            break
        task = model.meta.get("task")
        payload, arrays = unpack(model.params)
        if task == "stop":
            flare.send(flare.FLModel(params=pack({}, None), meta={"site": name}))
            break
        try:
            if site is None:
                site = Site(name, args.cohort, work, payload["cfg"], payload["fl"])
            reply, back = site.handle(task, payload, arrays)
        except Exception as err:  # noqa: BLE001 - the server stops the study naming this site and the error
            traceback.print_exc()
            from p53hcc.tools.errors import P53hccError

            reply, back = {"error": str(err) if isinstance(err, P53hccError) else f"{type(err).__name__}: {err}"}, {}
        flare.send(flare.FLModel(params=pack(reply, back), meta={"site": name}))


if __name__ == "__main__":
    main()

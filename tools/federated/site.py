"""One site of the federation: its own cohort rows and images, and the only things it answers.

A site runs the study's own stages on its own patients (preprocessing, radiomics, its stratified folds), keeps
every table in its work folder, and answers the server's tasks (:meth:`Site.handle`):

* ``prepare``  -> its patient counts per split and class (what the report's site table shows);
* ``sums``     -> for each request, the sums of :func:`p53hcc.fusion.federated.answer` over its selected rows;
* ``score``    -> scores its own patients with fitted specs and keeps them (answers only how many it scored);
* ``dl_train`` -> one FedAvg round of the bundles' train config through MONAI FL (:mod:`.dl`): weight updates;
* ``dl_outputs`` -> scores (MC) or penultimate features (FF) of its own patients under the global networks, kept.

No transport here: :mod:`.client` wraps it in FLARE's Client API, :mod:`.local` calls it in-process.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from p53hcc.fusion.models.federated import SiteTables, answer
from p53hcc.fusion.models.federated_fits import score_spec
from p53hcc.tools.errors import P53hccError
from p53hcc.tools.io import atomic_write_json, atomic_write_table

log = logging.getLogger(__name__)


class Site:
    """A site's data and task handlers (``cfg``: the resolved study config; ``fl``: the federated settings)."""

    def __init__(self, name: str, cohort_csv: str | Path, work_dir: str | Path, cfg: dict, fl: dict,
                 trains: bool = True):
        self.name, self.cohort_csv, self.dir, self.trains = name, Path(cohort_csv), Path(work_dir), trains
        self.cfg, self.fl = cfg, fl
        self.tables: SiteTables | None = None
        self._dl = None

    # ------------------------------------------------------------------------------------------ preparation
    def prepare(self) -> dict[str, Any]:
        """The study's stages on this site's own patients; the tables the answers are computed from."""
        from p53hcc.fusion.models.clinical import encode_clinical
        from p53hcc.tools.cohort.manifest import read_cohort
        from p53hcc.tools.cohort.splits import load_splits, write_datalist
        from p53hcc.tools.io import read_table
        from p53hcc.tools.preprocessing.run import preprocess_cohort
        from p53hcc.tools.radiomics.extract import extract_cohort

        self.dir.mkdir(parents=True, exist_ok=True)
        cohort = read_cohort(self.cohort_csv).sort_values("patient_id").set_index("patient_id", drop=False)
        n_train = int((cohort["split"] == "train").sum())
        if n_train < int(self.fl["min_site_patients"]):
            raise P53hccError(f"site {self.name}: {n_train} training patients, fewer than min_site_patients "
                              f"({self.fl['min_site_patients']}); merge it with another site or leave it out")
        ids = pd.Index(cohort["patient_id"].astype(str), name="patient_id")
        clinical = encode_clinical(cohort).set_axis(ids)  # a bad clinical value stops the site before image work
        preprocess_cohort(self.cohort_csv, self.dir, params=self.cfg["preprocess"]["params"], progress=False,
                          workers=1)
        extract_cohort(self.cohort_csv, self.dir, params=self.cfg["radiomics"]["params"], progress=False, workers=1)
        try:
            write_datalist(self.cohort_csv, self.dir, folds=int(self.fl["folds"]), seed=int(self.fl["seed"]))
        except P53hccError as err:
            raise P53hccError(f"site {self.name}: {err}") from None
        fold_of = {str(k): int(v) for k, v in load_splits(self.dir)["fold_of"].items()}
        rad = read_table(self.dir / "radiomics.parquet").astype({"patient_id": str}).set_index("patient_id")
        y = pd.to_numeric(cohort["p53"], errors="coerce").set_axis(ids)
        self.tables = SiteTables(
            tables={"clinical": clinical,
                    "radiomics": rad.select_dtypes("number").reindex(ids),
                    "scores": pd.DataFrame(index=ids)},
            y=y, split=cohort["split"].set_axis(ids), fold=pd.Series(fold_of).reindex(ids).fillna(-1).astype(int),
            trains=self.trains)
        counts = {f"{s}_{c}": int(((self.tables.split == s) & (y == c)).sum())
                  for s in ("train", "validation", "external") for c in (0, 1)}
        return {"site": self.name, **counts, "radiomics_features": list(self.tables.tables["radiomics"].columns)}

    # -------------------------------------------------------------------------------------------- answers
    def handle(self, task: str, payload: dict, arrays: dict[str, np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
        """Answer one task of the server (see the module docstring)."""
        if task == "prepare":
            return self.prepare(), {}
        if self.tables is None:
            raise P53hccError(f"site {self.name}: task {task!r} before prepare")
        if task == "sums":
            return {}, _flatten([answer(self.tables, r) for r in payload["requests"]])
        if task == "score":
            return {"n_scored": self.score(payload["model"], payload["specs"])}, {}
        if task in ("dl_train", "dl_outputs"):
            return self.dl.handle(task, payload, arrays)
        if task == "finish":
            self.save()
            return {}, {}
        raise P53hccError(f"site {self.name}: unknown task {task!r}")

    @property
    def dl(self):
        if self._dl is None:
            from p53hcc.tools.federated.dl import SiteDL

            self._dl = SiteDL(self)
        return self._dl

    def score(self, model: str, specs: dict) -> int:
        """Score this site's patients with a cross-fitted model: a training patient of fold k by the spec of fold
        k, every other patient by the spec fitted on all training patients (key -1); kept in the scores table."""
        t = self.tables
        specs = {int(k): v for k, v in specs.items()}
        out = pd.Series(np.nan, index=t.split.index)
        for k, spec in specs.items():
            rows = t.split.index[(t.split == "train") & (t.fold == k)] if k >= 0 else t.split.index[t.split != "train"]
            if len(rows):
                src = t.tables[spec.get("source", "scores")] if spec.get("constant") is None else pd.DataFrame(
                    index=rows)
                out.loc[rows] = score_spec(src.loc[rows], spec)
        t.tables["scores"][model] = out
        return int(out.notna().sum())

    def save(self) -> None:
        """This site's per-patient scores, kept at the site (``WORK/scores.parquet``) for its own use."""
        scores = self.tables.tables["scores"].reset_index().melt(id_vars="patient_id", var_name="model",
                                                                 value_name="score")
        scores["split"] = scores["patient_id"].map(self.tables.split)
        scores["fold"] = scores["patient_id"].map(self.tables.fold)
        atomic_write_table(self.dir / "scores.parquet", scores)
        atomic_write_json(self.dir / "site.json", {"site": self.name, "cohort": str(self.cohort_csv)})


def _flatten(answers: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Answers to a list of requests as one flat dict of arrays (``"<i>/<name>"``)."""
    return {f"{i}/{k}": np.asarray(v, float) for i, a in enumerate(answers) for k, v in a.items()}


def unflatten(arrays: dict[str, np.ndarray], n: int) -> list[dict[str, np.ndarray]]:
    """The inverse of :func:`_flatten`: ``n`` answers."""
    out: list[dict[str, np.ndarray]] = [{} for _ in range(n)]
    for key, v in arrays.items():
        i, name = key.split("/", 1)
        out[int(i)][name] = np.asarray(v)
    return out

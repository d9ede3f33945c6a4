"""Clinical model: encoding of cohort.csv clinical columns, Table 2 regressions and stepwise AIC selection.

The paper (Table 2) screens clinical, pathological and MRI-semantic variables by univariable logistic regression,
enters those with p < 0.05 into a multivariable model and keeps LTD and rim-APHE. Here the selection is a
deterministic stepwise search on the (unpenalised) statsmodels Logit AIC, and the final model is an unpenalised
logistic regression. Pathology (Edmondson-Steiner grade, MVI) is known only after surgery, so the clinical model
used for prediction drops it by default (``preoperative_only=True``); Table 2 keeps it to mirror the paper.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats as sps
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from statsmodels.tools.sm_exceptions import PerfectSeparationError

from p53hcc.fusion.inputs import align
from p53hcc.fusion.models.contract import BinaryClassifierMixin, binary_target, require_frame
from p53hcc.tools.errors import InputError

#: Model variables derived from cohort.csv, in table order.
PREOPERATIVE_VARIABLES: tuple[str, ...] = (
    "age", "sex_male", "afp_band", "cea_high", "ca199_high", "ltd_mm", "rim_aphe",
    "washout_nonperipheral", "washout_peripheral", "delayed_central", "capsule",
)
PATHOLOGY_VARIABLES: tuple[str, ...] = ("grade_high", "mvi")
#: Raw cohort.csv columns the encoder needs.
RAW_COLUMNS: tuple[str, ...] = ("age", "sex", "afp", "cea", "ca199", "ltd_mm", "rim_aphe", "washout",
                                "delayed_central", "capsule")
RAW_PATHOLOGY: tuple[str, ...] = ("grade", "mvi")
OUTCOME = "p53"
WASHOUT_LEVELS: tuple[str, ...] = ("none", "nonperipheral", "peripheral")
AFP_CUTS: tuple[float, float] = (20.0, 400.0)  # ng/mL: <20, 20-400, >=400
CEA_CUT = 5.0  # ng/mL
CA199_CUT = 37.0  # U/mL


def _ids(df: pd.DataFrame) -> pd.Index:
    """Patient ids of ``df`` (``patient_id`` column if present, else the index) as strings."""
    if "patient_id" in df.columns:
        return pd.Index(df["patient_id"].astype(str), name="patient_id")
    return pd.Index(df.index.astype(str), name="patient_id")


def _check_complete(df: pd.DataFrame, columns: Sequence[str], ids: pd.Index) -> None:
    """Raise InputError naming the first patient/column that is missing or empty."""
    for col in columns:
        if col not in df.columns:
            raise InputError(None, "clinical column missing from the cohort table", column=col)
        bad = df[col].isna().to_numpy()
        if bad.any():
            raise InputError(str(ids[int(np.argmax(bad))]), "missing value in a clinical variable", column=col)


def _binary(series: pd.Series, ids: pd.Index, column: str) -> np.ndarray:
    """0/1 column as int, rejecting anything else (e.g. 'yes', 2)."""
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isin(values, (0.0, 1.0))
    if bad.any():
        raise InputError(str(ids[int(np.argmax(bad))]), f"expected 0/1, got {series.iloc[int(np.argmax(bad))]!r}",
                         column=column)
    return values.astype(int)


def _numeric(series: pd.Series, ids: pd.Index, column: str) -> np.ndarray:
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values)
    if bad.any():
        raise InputError(str(ids[int(np.argmax(bad))]), f"not a number: {series.iloc[int(np.argmax(bad))]!r}",
                         column=column)
    return values


def encode_clinical(df: pd.DataFrame, preoperative_only: bool = True) -> pd.DataFrame:
    """Turn raw cohort.csv clinical columns into numeric model variables.

    Encoding (reference level first): ``age`` years; ``sex_male`` M=1/F=0; ``afp_band`` ordinal 0/1/2 for
    AFP <20, 20-<400, >=400 ng/mL (one OR per band step, as the paper's Table 2 reports one AFP OR);
    ``cea_high`` CEA >=5 ng/mL; ``ca199_high`` CA19-9 >=37 U/mL; ``ltd_mm``; ``rim_aphe``; washout as two
    indicators ``washout_nonperipheral`` / ``washout_peripheral`` against ``none`` (the three levels are not
    ordered: peripheral washout is an LR-M feature, non-peripheral an HCC feature); ``delayed_central``;
    ``capsule``; with pathology also ``grade_high`` (Edmondson-Steiner >= III) and ``mvi``.

    Args:
        df: cohort-like table (``patient_id`` column or index).
        preoperative_only: drop pathology variables (grade, MVI), unknown before surgery.

    Returns:
        DataFrame indexed by ``patient_id`` with the variables above (float).

    Raises:
        InputError: a needed column is absent or a value is missing/invalid (names patient and column).
    """
    ids = _ids(df)
    needed = list(RAW_COLUMNS) + ([] if preoperative_only else list(RAW_PATHOLOGY))
    _check_complete(df, needed, ids)
    out = pd.DataFrame(index=ids)
    out["age"] = _numeric(df["age"], ids, "age")
    sex = df["sex"].astype(str).str.strip().str.upper().to_numpy()
    bad = ~np.isin(sex, ("M", "F"))
    if bad.any():
        raise InputError(str(ids[int(np.argmax(bad))]), f"sex must be M or F, got {sex[int(np.argmax(bad))]!r}",
                         column="sex")
    out["sex_male"] = (sex == "M").astype(int)
    afp = _numeric(df["afp"], ids, "afp")
    out["afp_band"] = (afp >= AFP_CUTS[0]).astype(int) + (afp >= AFP_CUTS[1]).astype(int)
    out["cea_high"] = (_numeric(df["cea"], ids, "cea") >= CEA_CUT).astype(int)
    out["ca199_high"] = (_numeric(df["ca199"], ids, "ca199") >= CA199_CUT).astype(int)
    out["ltd_mm"] = _numeric(df["ltd_mm"], ids, "ltd_mm")
    out["rim_aphe"] = _binary(df["rim_aphe"], ids, "rim_aphe")
    wash = df["washout"].astype(str).str.strip().str.lower().to_numpy()
    bad = ~np.isin(wash, WASHOUT_LEVELS)
    if bad.any():
        raise InputError(str(ids[int(np.argmax(bad))]),
                         f"washout must be one of {WASHOUT_LEVELS}, got {wash[int(np.argmax(bad))]!r}",
                         column="washout")
    out["washout_nonperipheral"] = (wash == "nonperipheral").astype(int)
    out["washout_peripheral"] = (wash == "peripheral").astype(int)
    out["delayed_central"] = _binary(df["delayed_central"], ids, "delayed_central")
    out["capsule"] = _binary(df["capsule"], ids, "capsule")
    if not preoperative_only:
        out["grade_high"] = (_numeric(df["grade"], ids, "grade") >= 3).astype(int)
        out["mvi"] = _binary(df["mvi"], ids, "mvi")
    return out.astype(float)


def outcome_on(y: pd.Series | np.ndarray | Sequence, index: pd.Index) -> np.ndarray:
    """Binary outcome on ``index`` (the package's alignment rule: Series by patient id, arrays by position)."""
    try:
        arr = align(y, index, "outcome").to_numpy(dtype=float)
    except ValueError as err:
        raise InputError(None, str(err), column="p53") from err
    if not np.isin(arr, (0.0, 1.0)).all():
        raise InputError(None, "outcome must be 0/1 for every training patient", column="p53")
    return arr.astype(int)


_OR_COLUMNS = ["variable", "analysis", "coef", "odds_ratio", "ci_low", "ci_high", "p_value", "n", "note"]
SEPARATION = "not estimable: separation"


def fit_logit(X: pd.DataFrame, y: np.ndarray):
    """Unpenalised statsmodels Logit with intercept; returns the result or None when it cannot be fitted."""
    exog = sm.add_constant(X, has_constant="add")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            res = sm.Logit(y, exog).fit(disp=0, method="newton", maxiter=100)
        except (np.linalg.LinAlgError, PerfectSeparationError, ValueError):  # separation / singular: unusable
            return None
    if not res.mle_retvals.get("converged", True):  # e.g. quasi-complete separation
        return None
    if not np.all(np.isfinite(res.params)) or not np.all(np.isfinite(res.bse)):
        return None
    return res


def odds_ratio_rows(res, variables: Sequence[str], analysis: str) -> pd.DataFrame:
    """Tidy odds-ratio rows (Wald 95% CI) of ``variables`` in a fitted :func:`fit_logit` result (Table 2)."""
    if not variables:
        return pd.DataFrame(columns=_OR_COLUMNS)
    with np.errstate(over="ignore"):  # near-separated variables: OR = inf is the honest value
        return _odds_ratio_rows(res, variables, analysis)


def _odds_ratio_rows(res, variables: Sequence[str], analysis: str) -> pd.DataFrame:
    ci = res.conf_int(alpha=0.05)
    rows = [{"variable": v, "analysis": analysis, "coef": float(res.params[v]),
             "odds_ratio": float(np.exp(res.params[v])), "ci_low": float(np.exp(ci.loc[v, 0])),
             "ci_high": float(np.exp(ci.loc[v, 1])), "p_value": float(res.pvalues[v]), "n": int(res.nobs),
             "note": ""}
            for v in variables]
    return pd.DataFrame(rows)


def _unestimable_row(var: str, analysis: str, n: int, p_value: float, note: str) -> pd.DataFrame:
    """A row whose odds ratio cannot be estimated: NaN estimates, the p-value that can be, and why."""
    return pd.DataFrame([{"variable": var, "analysis": analysis, "coef": np.nan, "odds_ratio": np.nan,
                          "ci_low": np.nan, "ci_high": np.nan, "p_value": p_value, "n": n, "note": note}])


def separation_p(x: np.ndarray, y: np.ndarray) -> tuple[float, str]:
    """p-value of a single predictor whose logistic fit does not exist (complete or quasi-complete separation).

    The odds ratio is infinite, but the association can still be tested: a two-level predictor by Fisher's exact
    test on its 2 x 2 table; any other by the likelihood-ratio test against the intercept-only model, at the
    supremum of the likelihood (approached by a logistic fit with a vanishing penalty). A constant predictor
    has no p-value (NaN).
    """
    x, y = np.asarray(x, float), np.asarray(y, int)
    levels = np.unique(x)
    if len(levels) < 2:
        return float("nan"), "constant variable: no test"
    if len(levels) == 2:
        hi = x == levels[1]
        table = [[int(np.sum(hi & (y == 1))), int(np.sum(hi & (y == 0)))],
                 [int(np.sum(~hi & (y == 1))), int(np.sum(~hi & (y == 0)))]]
        return float(sps.fisher_exact(table).pvalue), f"{SEPARATION}; p from Fisher's exact test"
    from sklearn.linear_model import LogisticRegression

    z = ((x - x.mean()) / x.std()).reshape(-1, 1)
    fit = LogisticRegression(C=1e12, max_iter=100000, tol=1e-12).fit(z, y)
    p1 = np.clip(fit.predict_proba(z)[:, 1], 1e-300, 1 - 1e-16)
    llf = float(np.sum(y * np.log(p1) + (1 - y) * np.log1p(-p1)))
    prev = y.mean()
    llf0 = float(np.sum(y * np.log(prev) + (1 - y) * np.log1p(-prev)))
    return float(sps.chi2.sf(2 * (llf - llf0), 1)), f"{SEPARATION}; p from the likelihood-ratio test"



def univariable_table(X: pd.DataFrame, y) -> pd.DataFrame:
    """One unpenalised Logit per variable: OR, Wald 95% CI and p.

    Returns:
        Tidy frame (variable, analysis="univariable", coef, odds_ratio, ci_low, ci_high, p_value, n, note); a
        variable that separates the classes gets NaN estimates, the p-value of :func:`separation_p` and a note
        saying so; a constant one NaN throughout.
    """
    y = outcome_on(y, X.index)
    frames = []
    for var in X.columns:
        res = fit_logit(X[[var]], y) if X[var].nunique() > 1 else None
        if res is None:
            p_value, note = separation_p(X[var].to_numpy(float), y)
            frames.append(_unestimable_row(var, "univariable", len(y), p_value, note))
        else:
            frames.append(odds_ratio_rows(res, [var], "univariable"))
    return pd.concat(frames, ignore_index=True)[_OR_COLUMNS]


def multivariable_table(X: pd.DataFrame, y, p_enter: float = 0.05) -> pd.DataFrame:
    """Multivariable Logit on the variables whose univariable p < ``p_enter`` (the paper's Table 2 rule).

    Returns:
        Tidy frame like :func:`univariable_table` with analysis="multivariable" (empty if nothing enters).
    """
    uni = univariable_table(X, y)
    entered = [v for v in X.columns if float(uni.set_index("variable").loc[v, "p_value"]) < p_enter]
    if not entered:
        return pd.DataFrame(columns=_OR_COLUMNS)
    res = fit_logit(X[entered], outcome_on(y, X.index))
    if res is None:  # separation or collinearity: the joint odds ratios do not exist; say so on each row
        note = f"not estimable: the joint fit of {len(entered)} variables does not converge (separation or collinearity)"
        return pd.concat([_unestimable_row(v, "multivariable", len(X), np.nan, note) for v in entered],
                         ignore_index=True)[_OR_COLUMNS]
    return odds_ratio_rows(res, entered, "multivariable")[_OR_COLUMNS]


def _aic(X: pd.DataFrame, y: np.ndarray, cols: Sequence[str]) -> float:
    res = fit_logit(X[list(cols)], y)
    return float(res.aic) if res is not None else np.inf


def stepwise_aic(X: pd.DataFrame, y, direction: str = "both", start: Sequence[str] | None = None,
                 max_steps: int = 100) -> list[str]:
    """Stepwise variable selection on the Logit AIC (like R's ``step``), deterministic.

    Each step evaluates every allowed single addition (``forward``/``both``) and removal (``backward``/``both``)
    and takes the move with the lowest AIC if it lowers the current AIC; ties break by column order, removals
    before additions. Candidates that cannot be fitted (separation) get AIC = inf.

    Args:
        X: numeric model variables (columns are candidates).
        y: 0/1 outcome aligned with X.
        direction: "both", "forward" or "backward".
        start: initial set; default empty for forward/both and all columns for backward.
        max_steps: safety bound on the number of moves.

    Returns:
        Selected column names in X's column order.
    """
    if direction not in ("both", "forward", "backward"):
        raise ValueError(f"direction must be both/forward/backward, got {direction!r}")
    y = outcome_on(y, X.index)
    if np.unique(y).size < 2:
        raise InputError(None, f"stepwise selection needs patients of both classes; all {y.size} have p53 = "
                               f"{int(y[0]) if y.size else 'none'} (no model can be compared on AIC)", column="p53")
    order = list(X.columns)
    current = list(start) if start is not None else ([] if direction != "backward" else order.copy())
    best = _aic(X, y, current)
    for _ in range(max_steps):
        moves: list[tuple[float, list[str]]] = []
        if direction in ("both", "backward"):
            moves += [(_aic(X, y, [c for c in current if c != v]), [c for c in current if c != v]) for v in current]
        if direction in ("both", "forward"):
            moves += [(_aic(X, y, current + [v]), current + [v]) for v in order if v not in current]
        if not moves:
            break
        aic, cols = min(moves, key=lambda m: m[0])  # min keeps the first of equal AICs: deterministic
        if not aic < best - 1e-9:
            break
        best, current = aic, cols
    return [c for c in order if c in current]


class ClinicalModel(BinaryClassifierMixin, BaseEstimator):
    """Clinical logistic model: encode -> univariable screen -> stepwise AIC -> unpenalised LR.

    Takes a cohort-like DataFrame of raw clinical columns as X, so it can be cloned and cross-fitted like any
    sklearn classifier. Attributes after fit: ``selected_`` (kept variables), ``screened_`` (univariable
    p < p_enter), ``coef_table_`` (tidy OR table of the final model), ``params_`` (intercept + coefficients),
    ``univariable_`` (screen table).

    Args:
        preoperative_only: exclude pathology (grade, MVI); default True for prediction use.
        p_enter: univariable p threshold to enter the stepwise search.
        direction: stepwise direction ("both", "forward", "backward").
        candidates: optional subset of encoded variables to consider.
    """

    def __init__(self, preoperative_only: bool = True, p_enter: float = 0.05, direction: str = "both",
                 candidates: Sequence[str] | None = None):
        self.preoperative_only = preoperative_only
        self.p_enter = p_enter
        self.direction = direction
        self.candidates = candidates

    def _encode(self, X: pd.DataFrame) -> pd.DataFrame:
        require_frame(X, "ClinicalModel", "the cohort's named clinical columns (age, sex, afp, ...)")
        enc = encode_clinical(X, preoperative_only=self.preoperative_only)
        return enc[list(self.candidates)] if self.candidates is not None else enc

    def fit(self, X: pd.DataFrame, y) -> ClinicalModel:
        """Select variables and fit the LR on training patients only (``X`` must not hold the outcome)."""
        if OUTCOME in getattr(X, "columns", ()):  # a model handed its own label could learn it; refuse rather than trust
            raise InputError(None, "the clinical model's inputs contain the outcome column; pass the clinical "
                                   "variables only", column=OUTCOME)
        enc = self._encode(X)
        target = binary_target(outcome_on(y, enc.index), OUTCOME, zero_one=True)  # both classes present
        self.classes_ = np.array([0, 1])
        self.univariable_ = univariable_table(enc, target)
        p = self.univariable_.set_index("variable")["p_value"]
        self.screened_ = [v for v in enc.columns if p[v] < self.p_enter]
        self.selected_ = stepwise_aic(enc[self.screened_], target, direction=self.direction) if self.screened_ else []
        res = fit_logit(enc[self.selected_], target)
        if res is None:  # should not happen: stepwise only keeps fittable sets
            raise InputError(None, f"clinical LR could not be fitted on {self.selected_}")
        self.params_ = res.params.rename({"const": "intercept"})
        self.coef_table_ = odds_ratio_rows(res, self.selected_, "multivariable")[_OR_COLUMNS]
        self.n_features_in_ = enc.shape[1]
        return self

    def decision_function(self, X: pd.DataFrame) -> np.ndarray:
        """Linear predictor (log-odds of P53 mutation)."""
        check_is_fitted(self, "params_")
        enc = self._encode(X)
        beta = self.params_.drop("intercept")
        return self.params_["intercept"] + enc[list(beta.index)].to_numpy(float) @ beta.to_numpy(float)

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Columns: P(p53=0), P(p53=1)."""
        p1 = 1.0 / (1.0 + np.exp(-self.decision_function(X)))
        return np.column_stack([1.0 - p1, p1])

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """0/1 at probability 0.5 (reports use the training-cohort Youden threshold instead)."""
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)

"""Paper tables: Table 1 (baseline characteristics), Table 2 (logistic regression), Tables 3-5 (metrics).

Data tables are tidy and numeric; strings like "59.50±12.27" or "75 (78.12)" are produced only by the
``render_*`` functions.

Test rules (stated, applied identically to every comparison):
  * continuous: Student's t-test (equal variances) when the Shapiro-Wilk test has p > 0.05 in both groups,
    otherwise the two-sided Mann-Whitney U test;
  * categorical 2 x k: Pearson chi-square, with Yates' continuity correction for 2 x 2 tables (scipy's default;
    the paper's printed p values for gender 0.13, CA19-9 0.84, MVI 0.21, capsule 0.16 and CEA ">0.99" are the
    Yates values). When any expected count is < 5: Fisher's exact test for 2 x 2 tables; for larger tables a
    permutation test of the chi-square statistic (9,999 resamples, fixed seed) stands in for the
    Fisher-Freeman-Halton exact test, which scipy lacks. ``small_expected="chi2"`` keeps the chi-square
    regardless (that setting reproduces the paper's printed values, e.g. CA19-9 in the VC, 0.03).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from p53hcc.fusion.models.clinical import (
    encode_clinical,
    fit_logit,
    multivariable_table,
    odds_ratio_rows,
    outcome_on,
    stepwise_aic,
    univariable_table,
)
from p53hcc.tools.schema import SPLIT_LABELS

GROUP_LABELS = {"0": "P53\u2212 HCC", "1": "P53+ HCC"}


@dataclass(frozen=True)
class Variable:
    """One Table 1 row block: how to derive it from cohort.csv and how to label it."""

    name: str
    label: str
    kind: str  # "continuous" | "categorical"
    derive: Callable[[pd.DataFrame], pd.Series]
    levels: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()


def _yn(col: str) -> Callable[[pd.DataFrame], pd.Series]:
    return lambda d: pd.to_numeric(d[col]).map({0: "Negative", 1: "Positive"})


def _cut(col: str, cuts: Sequence[float], labels: Sequence[str]) -> Callable[[pd.DataFrame], pd.Series]:
    return lambda d: pd.Series(np.asarray(labels, dtype=object)[np.searchsorted(cuts, pd.to_numeric(d[col]),
                                                                               side="right")], index=d.index)


TABLE1_VARIABLES: tuple[Variable, ...] = (
    Variable("age", "Age, years", "continuous", lambda d: pd.to_numeric(d["age"]), needs=("age",)),
    Variable("sex", "Gender", "categorical", lambda d: d["sex"].astype(str).str.upper().map({"M": "Male", "F": "Female"}),
             ("Male", "Female"), ("sex",)),
    Variable("ca199", "CA19-9, U/mL", "categorical", _cut("ca199", [37], ["<37", "\u226537"]),
             ("<37", "\u226537"), ("ca199",)),
    Variable("afp", "AFP, ng/mL", "categorical", _cut("afp", [20, 400], ["<20", "\u226520 and <400", "\u2265400"]),
             ("<20", "\u226520 and <400", "\u2265400"), ("afp",)),
    Variable("cea", "CEA, ng/mL", "categorical", _cut("cea", [5], ["<5", "\u22655"]), ("<5", "\u22655"), ("cea",)),
    Variable("grade", "Edmondson-Steiner grade", "categorical", _cut("grade", [3], ["I-II", "III-IV"]),
             ("I-II", "III-IV"), ("grade",)),
    Variable("mvi", "MVI", "categorical", _yn("mvi"), ("Negative", "Positive"), ("mvi",)),
    Variable("ltd_mm", "LTD, mm", "continuous", lambda d: pd.to_numeric(d["ltd_mm"]), needs=("ltd_mm",)),
    Variable("rim_aphe", "Rim-APHE", "categorical", _yn("rim_aphe"), ("Negative", "Positive"), ("rim_aphe",)),
    Variable("washout", "Washout at portal venous phase", "categorical",
             lambda d: d["washout"].astype(str).str.lower().map(
                 {"nonperipheral": "Nonperipheral washout", "peripheral": "Peripheral washout", "none": "No washout"}),
             ("Nonperipheral washout", "Peripheral washout", "No washout"), ("washout",)),
    Variable("delayed_central", "Delayed central enhancement", "categorical", _yn("delayed_central"),
             ("Negative", "Positive"), ("delayed_central",)),
    Variable("capsule", "Enhancing capsule", "categorical", _yn("capsule"), ("Negative", "Positive"), ("capsule",)),
)


def compare_continuous(a: np.ndarray, b: np.ndarray, alpha_normal: float = 0.05) -> tuple[float, str]:
    """p value and test name: Student's t if Shapiro-Wilk p > alpha_normal in both groups, else Mann-Whitney U."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if min(len(a), len(b)) < 2:
        return np.nan, "none"
    normal = min(len(a), len(b)) >= 3 and all(sps.shapiro(g).pvalue > alpha_normal for g in (a, b))
    if normal:
        return float(sps.ttest_ind(a, b, equal_var=True).pvalue), "student_t"
    return float(sps.mannwhitneyu(a, b, alternative="two-sided").pvalue), "mann_whitney_u"


def _chi2_stat(tables: np.ndarray, expected: np.ndarray) -> np.ndarray:
    return (((tables - expected) ** 2) / expected).sum(axis=(-2, -1))


def permutation_chi2(counts: np.ndarray, n_resamples: int = 9999, seed: int = 0) -> float:
    """Monte-Carlo permutation p value of Pearson's chi-square with both margins fixed.

    Equivalent to ``scipy.stats.chi2_contingency(..., method=PermutationMethod())`` (same p = (k + 1) / (B + 1)
    convention) but vectorised: group labels are permuted B times and tabulated with one ``bincount``.
    """
    t = np.asarray(counts, dtype=np.int64)
    r, c = t.shape
    rows = np.repeat(np.arange(r), t.sum(axis=1))
    cols = np.concatenate([np.repeat(np.arange(c), t[i]) for i in range(r)])
    expected = sps.contingency.expected_freq(t)
    observed = _chi2_stat(t.astype(float), expected)
    rng = np.random.default_rng(seed)
    perm = rng.permuted(np.tile(rows, (n_resamples, 1)), axis=1)
    flat = (perm * c + cols + (np.arange(n_resamples) * r * c)[:, None]).ravel()
    sims = np.bincount(flat, minlength=n_resamples * r * c).reshape(n_resamples, r, c).astype(float)
    k = int((_chi2_stat(sims, expected) >= observed * (1 - 1e-12)).sum())
    return (k + 1) / (n_resamples + 1)


def _counts_table(counts) -> np.ndarray:
    """``counts`` as a 2-D integer table; NaN, infinite, negative or fractional counts are an error."""
    try:
        t = np.asarray(counts, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"counts must be numbers, got {counts!r}") from None
    if t.ndim != 2:
        raise ValueError(f"counts must be a 2-D table (rows = groups, columns = levels), got shape {t.shape}")
    if not np.isfinite(t).all():
        raise ValueError(f"counts contain {int((~np.isfinite(t)).sum())} NaN/infinite value(s)")
    if (t < 0).any() or (t != np.round(t)).any():
        bad = t[(t < 0) | (t != np.round(t))][0]
        raise ValueError(f"counts must be non-negative whole numbers, got {bad:g}")
    return t.astype(np.int64)


def compare_categorical(counts: np.ndarray, small_expected: str = "fisher", seed: int = 0) -> tuple[float, str]:
    """p value and test name for a contingency table of counts (rows = groups, columns = levels).

    Args:
        counts: 2-D counts; all-zero rows/columns are dropped first.
        small_expected: "fisher" (exact / permutation when any expected count < 5) or "chi2" (always chi-square).
        seed: seed of the permutation test used for > 2 x 2 tables with small expected counts.
    """
    t = _counts_table(counts)
    t = t[t.sum(axis=1) > 0][:, t.sum(axis=0) > 0]
    if t.shape[0] < 2 or t.shape[1] < 2:
        return np.nan, "none"
    expected = sps.contingency.expected_freq(t)
    small = bool((expected < 5).any()) and small_expected == "fisher"
    if t.shape == (2, 2):
        if small:
            return float(sps.fisher_exact(t).pvalue), "fisher_exact"
        return float(sps.chi2_contingency(t, correction=True).pvalue), "chi2_yates"
    if small:
        return permutation_chi2(t, n_resamples=9999, seed=seed), "chi2_permutation"
    return float(sps.chi2_contingency(t, correction=False).pvalue), "chi2"


def _describe(var: Variable, values: pd.Series, groups: pd.Series, order: Sequence[str]) -> list[dict]:
    rows = []
    for g in order:
        v = values[groups == g]
        if var.kind == "continuous":
            rows.append({"level": "", "group": g, "n": int(v.notna().sum()), "pct": np.nan,
                         "mean": float(v.mean()), "sd": float(v.std(ddof=1))})
        else:
            for lev in var.levels:
                k = int((v == lev).sum())
                rows.append({"level": lev, "group": g, "n": k, "pct": 100.0 * k / max(int(v.notna().sum()), 1),
                             "mean": np.nan, "sd": np.nan})
    return rows


def _compare(var: Variable, values: pd.Series, groups: pd.Series, order: Sequence[str],
             small_expected: str) -> tuple[float, str]:
    if var.kind == "continuous":
        return compare_continuous(values[groups == order[0]], values[groups == order[1]])
    counts = np.array([[int((values[groups == g] == lev).sum()) for lev in var.levels] for g in order])
    return compare_categorical(counts, small_expected=small_expected)


def _block(var: Variable, values: pd.Series, groups: pd.Series, order: Sequence[str], cohort: str,
           small_expected: str) -> list[dict]:
    p, test = _compare(var, values, groups, order, small_expected)
    return [{"variable": var.name, "label": var.label, "kind": var.kind, "cohort": cohort, **r,
             "p_value": p, "test": test} for r in _describe(var, values, groups, order)]


def table1(df: pd.DataFrame, group: str = "p53", by_split: bool = True,
           splits: Sequence[str] = ("train", "validation"), small_expected: str = "fisher",
           variables: Sequence[Variable] = TABLE1_VARIABLES) -> pd.DataFrame:
    """Baseline characteristics by ``group`` within each cohort, plus the between-cohort comparison.

    Args:
        df: cohort table (raw cohort.csv columns, ``split`` and ``group``).
        group: 0/1 column to compare within each cohort (P53 status).
        by_split: one block per split in ``splits``; False pools all rows as cohort "all".
        splits: cohorts to describe; the first two are also compared with each other (rows with
            ``group == "all"``, e.g. the paper's TC-vs-VC column).
        small_expected: see :func:`compare_categorical`.
        variables: row definitions (default: the paper's Table 1; absent columns are skipped).

    Returns:
        Tidy frame: variable, label, kind, level, cohort, group ("0", "1" or "all"), n, pct, mean, sd,
        p_value, test. ``p_value``/``test`` repeat on every row of the comparison they belong to.
    """
    data = df[df[group].notna()].copy() if by_split else df.assign(split="all")[df[group].notna()]
    data["_grp"] = data[group].astype(int).astype(str)
    cohorts = [s for s in splits if (data["split"] == s).any()] if by_split else ["all"]
    rows: list[dict] = []
    for var in variables:
        if not set(var.needs).issubset(data.columns):
            continue
        values = var.derive(data)
        for c in cohorts:
            sub = data["split"] == c
            rows += _block(var, values[sub], data.loc[sub, "_grp"], ("0", "1"), c, small_expected)
        if by_split and len(cohorts) >= 2:
            sub = data["split"].isin(cohorts[:2])
            comp = _block(var, values[sub], data.loc[sub, "split"], tuple(cohorts[:2]), "_".join(cohorts[:2]),
                          small_expected)
            for r in comp:
                r["cohort"], r["group"] = r["group"], "all"
            rows += comp
    return pd.DataFrame(rows, columns=["variable", "label", "kind", "level", "cohort", "group", "n", "pct",
                                       "mean", "sd", "p_value", "test"])


def format_p(p: float) -> str:
    """Paper style: '<0.001', '>0.99', 3 decimals below 0.01, else 2 decimals."""
    if p is None or not np.isfinite(p):
        return ""
    if p < 0.001:
        return "<0.001"
    if p > 0.99:
        return ">0.99"
    return f"{p:.3f}" if p < 0.01 else f"{p:.2f}"


def render_table1(tidy: pd.DataFrame) -> pd.DataFrame:
    """Format a :func:`table1` frame like the paper ("59.50±12.27", "75 (78.12)", p per block)."""
    cohorts = [c for c in tidy.loc[tidy["group"] != "all", "cohort"].unique()]
    cols: list[str] = []
    head = {}
    for c in cohorts:
        for g in ("0", "1"):
            sub = tidy[(tidy.cohort == c) & (tidy.group == g)]
            n = int(sub.groupby("variable")["n"].sum().max()) if len(sub) else 0
            head[(c, g)] = f"{SPLIT_LABELS.get(c, c)} {GROUP_LABELS[g]} (n={n})"
            cols.append(head[(c, g)])
        cols.append(f"{SPLIT_LABELS.get(c, c)} P value")
    has_split = (tidy["group"] == "all").any()
    if has_split:
        cols.append(" vs ".join(SPLIT_LABELS.get(c, c) for c in cohorts[:2]) + " P value")
    out = []
    for var, block in tidy.groupby("variable", sort=False):
        kind, label = block["kind"].iloc[0], block["label"].iloc[0]
        top = {"Characteristics": label}
        for c in cohorts:
            top[f"{SPLIT_LABELS.get(c, c)} P value"] = format_p(block.loc[(block.cohort == c), "p_value"].iloc[0])
        if has_split:
            top[cols[-1]] = format_p(block.loc[block.group == "all", "p_value"].iloc[0])
        if kind == "continuous":
            for c in cohorts:
                for g in ("0", "1"):
                    r = block[(block.cohort == c) & (block.group == g)].iloc[0]
                    top[head[(c, g)]] = f"{r['mean']:.2f}\u00b1{r['sd']:.2f}"
            out.append(top)
            continue
        out.append(top)
        for lev in block.loc[block.group != "all", "level"].unique():
            row = {"Characteristics": f"  {lev}"}
            for c in cohorts:
                for g in ("0", "1"):
                    r = block[(block.cohort == c) & (block.group == g) & (block.level == lev)].iloc[0]
                    row[head[(c, g)]] = f"{int(r['n'])} ({r['pct']:.2f})"
            out.append(row)
    return pd.DataFrame(out, columns=["Characteristics"] + cols).fillna("")


def table2(df: pd.DataFrame, y=None, preoperative_only: bool = False, p_enter: float = 0.05) -> pd.DataFrame:
    """Univariable ORs for every variable, multivariable ORs for those with p < p_enter, and the stepwise model.

    Args:
        df: training-cohort rows (raw cohort.csv columns).
        y: 0/1 outcome; default ``df["p53"]``.
        preoperative_only: drop grade and MVI (default False: the paper's Table 2 includes pathology).
        p_enter: univariable threshold for the multivariable model.

    Returns:
        Tidy frame (variable, analysis in {univariable, multivariable, stepwise}, coef, odds_ratio, ci_low,
        ci_high, p_value, n, note) with Wald 95% CIs from unpenalised statsmodels Logit fits.
    """
    X = encode_clinical(df, preoperative_only=preoperative_only)
    target = outcome_on(df["p53"].to_numpy() if y is None else y, X.index)
    uni = univariable_table(X, target)
    multi = multivariable_table(X, target, p_enter=p_enter)
    entered = list(multi["variable"])
    kept = stepwise_aic(X[entered], target) if entered else []
    res = fit_logit(X[kept], target)
    step = odds_ratio_rows(res, kept, "stepwise") if kept and res is not None else pd.DataFrame(columns=uni.columns)
    return pd.concat([uni, multi, step], ignore_index=True)


VARIABLE_LABELS = {"age": "Age", "sex_male": "Gender (male)", "afp_band": "AFP (per band)", "cea_high": "CEA \u22655",
                   "ca199_high": "CA19-9 \u226537", "grade_high": "Edmondson-Steiner grade \u2265III", "mvi": "MVI",
                   "ltd_mm": "LTD (per mm)", "rim_aphe": "Rim-APHE", "washout_nonperipheral": "Nonperipheral washout",
                   "washout_peripheral": "Peripheral washout", "delayed_central": "Delayed central enhancement",
                   "capsule": "Enhancing capsule"}


def render_table2(tidy: pd.DataFrame, multivariable: str = "multivariable") -> pd.DataFrame:
    """Paper layout: Characteristics | Univariable OR, 95% CI, P | Multivariable OR, 95% CI, P.

    An odds ratio that cannot be estimated is replaced by the reason (e.g. "not estimable: separation"); its
    p-value is shown when one exists (Fisher's exact or likelihood-ratio test).
    """
    out = []
    for var in tidy.loc[tidy.analysis == "univariable", "variable"]:
        row = {"Characteristics": VARIABLE_LABELS.get(var, var)}
        for analysis, tag in (("univariable", "Univariable"), (multivariable, "Multivariable")):
            r = tidy[(tidy.variable == var) & (tidy.analysis == analysis)]
            if not len(r):
                continue
            r = r.iloc[0]
            if np.isfinite(r.odds_ratio):
                row[f"{tag} OR"] = f"{r.odds_ratio:.3f}"
                row[f"{tag} 95% CI"] = f"{r.ci_low:.3f}\u2013{r.ci_high:.3f}"
            elif isinstance(r.get("note"), str) and r.get("note"):  # a blank cell says why it is blank
                row[f"{tag} OR"] = r["note"].split(";")[0]
            row[f"{tag} P value"] = format_p(r.p_value)
        out.append(row)
    cols = ["Characteristics"] + [f"{t} {c}" for t in ("Univariable", "Multivariable") for c in ("OR", "95% CI", "P value")]
    return pd.DataFrame(out, columns=cols).fillna("")


_METRIC_ALIASES = {"auc": "auc", "roc_auc": "auc", "accuracy": "accuracy", "acc": "accuracy",
                   "sensitivity": "sensitivity", "sens": "sensitivity", "specificity": "specificity", "spec": "specificity"}


def _fmt_metric(sub: pd.DataFrame, key: str) -> str:
    return f"{sub.loc[key, 'estimate']:.3f}" if key in sub.index else ""


def _fmt_auc(sub: pd.DataFrame) -> str:
    if "auc" not in sub.index:
        return ""
    r = sub.loc["auc"]
    return f"{r['estimate']:.3f} ({r['ci_low']:.3f}\u2013{r['ci_high']:.3f})"


def metric_table(metrics_long: pd.DataFrame, models: Sequence[str] | None = None,
                 splits: Sequence[str] = ("train", "validation", "external"),
                 labels: dict[str, str] | None = None) -> pd.DataFrame:
    """Render metrics.csv rows (model, split, metric, estimate, ci_low, ci_high) like the paper's Tables 3-5.

    Args:
        metrics_long: tidy metrics (metric names case-insensitive: auc, accuracy, sensitivity, specificity).
        models: models to show, in order (default: order of appearance).
        splits: cohorts to show, in order (absent ones are skipped).
        labels: optional display names per model.

    Returns:
        Formatted frame: Model name, Cohort, Accuracy, AUC (95% CI), Sensitivity, Specificity.
    """
    m = metrics_long.assign(metric=metrics_long["metric"].str.lower().map(_METRIC_ALIASES))
    m = m[m["metric"].notna()]
    models = list(dict.fromkeys(m["model"])) if models is None else list(models)
    labels = labels or {}
    rows = []
    for model in models:
        for split in splits:
            sub = m[(m.model == model) & (m.split == split)].set_index("metric")
            if sub.empty:
                continue
            rows.append({"Model name": labels.get(model, model), "Cohort": SPLIT_LABELS.get(split, split),
                         "Accuracy": _fmt_metric(sub, "accuracy"), "AUC (95% CI)": _fmt_auc(sub),
                         "Sensitivity": _fmt_metric(sub, "sensitivity"),
                         "Specificity": _fmt_metric(sub, "specificity")})
    return pd.DataFrame(rows, columns=["Model name", "Cohort", "Accuracy", "AUC (95% CI)", "Sensitivity",
                                       "Specificity"])

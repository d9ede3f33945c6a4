"""MONAI Deploy application: the P53 mutation probability of one patient's DCE-MRI DICOM study.

Input (``-i``): a folder with the patient's DICOM study: the arterial (AP), portal-venous (PVP) and delayed (DP)
MR series, a tumour mask per phase (DICOM SEG, or NIfTI ``<phase>_mask.nii.gz``) and optionally ``clinical.json``
(selection rules: ``deploy/README.md``). Models (``-m``): a bundle folder written by ``p53hcc export-bundle``, or a
folder holding it and the frozen study model (``STUDY/model``) as ``study_model/``. Output (``-o``):
``result.json`` and ``result_sr.dcm`` (a TID 1500 Measurement Report citing every input instance: the
probability, the class at the bundle's threshold, the algorithm; with clinical values and the study model, the
combined model's probability, class and nomogram points too).

Before the SDK's graph runs, :func:`main` checks everything (folders, models, every series and file, clinical
values: :func:`p53hcc.tools.deploy.run.prepare`) and runs N4 once per phase for both models; a refusal is
one line on stderr and exit code 1, with no output folder left behind (:mod:`p53hcc.tools.deploy.refusal`).
Operators: the checked input, the SDK's ``MonaiBundleInferenceOperator`` with the bundle's ``configs/deploy.json``
and TorchScript network, the combined model (:func:`~p53hcc.tools.deploy.run.combined_for`), the writer
(:func:`~p53hcc.tools.deploy.run.write_outputs`, only once everything exists).

Run locally: ``python deploy/app.py -i STUDY_DIR -m MODELS_DIR -o OUT_DIR`` (or ``python -m deploy ...``).
"""
from __future__ import annotations


def _roomy_stack() -> None:
    """The 32 MB stack holoscan asks for (else it warns on import that a smaller one "may cause crashes"): the
    soft limit is raised within the hard one before the SDK is imported."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    want = 32 * 2**20 if hard == resource.RLIM_INFINITY else min(32 * 2**20, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_STACK, (want, hard))


_roomy_stack()

import logging  # after the stack limit: every import of monai imports holoscan
import sys
from pathlib import Path

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application, Image, IOType, Operator, OperatorSpec
from monai.deploy.operators.monai_bundle_inference_operator import (
    BundleConfigNames,
    IOMapping,
    MonaiBundleInferenceOperator,
)

from p53hcc.tools.deploy.refusal import app_paths, check_paths, guarded, raise_failure, refusals
from p53hcc.tools.deploy.run import (
    bundle_result,
    combined_for,
    prepare,
    sdk_image,
    write_outputs,
)
from p53hcc.tools.deploy.shared_preprocessing import BUNDLE_OVERRIDES


class StudyReaderOperator(Operator):
    """The checked input (read before the graph runs) -> the six-channel volume as an SDK Image, and the input."""

    def __init__(self, fragment, *args, study, **kwargs):
        self.app, self.study = fragment, study
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.output("image")
        spec.output("study")

    @guarded
    def compute(self, op_input, op_output, context):
        op_output.emit(sdk_image(self.study.volume), "image")
        self.study.volume = None  # the bundle operator has its own copy
        op_output.emit(self.study, "study")


class BundleOperator(MonaiBundleInferenceOperator):
    """The SDK's bundle operator with config values set by the app (its input is preprocessed already), and
    an error kept for the app to report (:func:`~p53hcc.tools.deploy.refusal.guarded`)."""

    def __init__(self, fragment, *args, overrides: dict, **kwargs):
        self.app, self._overrides = fragment, dict(overrides)
        super().__init__(fragment, *args, **kwargs)

    @property
    def parser(self):
        # The SDK reads the bundle's configs into ``_parser`` and then reads everything through this property:
        # the app's values go in first, before any item is parsed.
        if self._parser is not None and self._overrides:
            self._parser.update(self._overrides)
            self._overrides = {}
        return self._parser

    @parser.setter
    def parser(self, parser):
        self._parser = parser

    compute = guarded(MonaiBundleInferenceOperator.compute)


class CombinedOperator(Operator):
    """The bundle's probabilities and the inputs -> the result (DL arm, and the combined model when possible)."""

    def __init__(self, fragment, *args, bundle: Path, study_model: Path | None, **kwargs):
        self.app, self.bundle, self.study_model = fragment, bundle, study_model
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("pred")
        spec.input("study")
        spec.output("result")

    @guarded
    def compute(self, op_input, op_output, context):
        study = op_input.receive("study")
        result = bundle_result(self.bundle, float(op_input.receive("pred")["probabilities"][1]))
        result = {**result, "dl_note": study.dl_note(), "inputs": study.identities(),
                  **combined_for(study, self.study_model, result["probability"])}
        op_output.emit({"result": result, "evidence": study.evidence}, "result")


class ResultWriterOperator(Operator):
    """The result -> ``result.json`` and ``result_sr.dcm``."""

    def __init__(self, fragment, *args, output_folder: Path, **kwargs):
        self.app, self.output_folder = fragment, Path(output_folder)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("result")

    @guarded
    def compute(self, op_input, op_output, context):
        got = op_input.receive("result")
        paths = write_outputs(self.output_folder, got["result"], got["evidence"])
        logging.getLogger(__name__).info("P(P53 mutated) = %.6g -> %s", got["result"]["probability"], paths["json"])


class P53HccApp(Application):
    """P53-mutated HCC from three-phase DCE-MRI with an exported p53hcc bundle (and the frozen study model).

    ``prepared``: :func:`p53hcc.tools.deploy.run.prepare`'s ``(bundle, study_model, study)``, set before
    :meth:`run` (:func:`main` does)."""

    prepared = None
    failure = None

    def compose(self):
        bundle, study_model, study = self.prepared
        context = Application.init_app_context(self.argv)
        # The SDK wraps the models folder as a generic Model (no network in it); without one the operator loads
        # the bundle folder itself: its configs, its scripts/ and models/model.ts.
        context.models = None
        reader = StudyReaderOperator(self, CountCondition(self, 1), study=study, name="study_reader")
        scorer = BundleOperator(
            self, overrides=BUNDLE_OVERRIDES, input_mapping=[IOMapping("image", Image, IOType.IN_MEMORY)],
            output_mapping=[IOMapping("pred", dict, IOType.IN_MEMORY)],
            bundle_config_names=BundleConfigNames(config_names=["deploy"]), bundle_path=bundle,
            app_context=context, name="bundle_inference")
        combined = CombinedOperator(self, bundle=bundle, study_model=study_model, name="combined_model")
        writer = ResultWriterOperator(self, output_folder=Path(context.output_path), name="result_writer")
        self.add_flow(reader, scorer, {("image", "image")})
        self.add_flow(reader, combined, {("study", "study")})
        self.add_flow(scorer, combined, {("pred", "pred")})
        self.add_flow(combined, writer, {("result", "result")})


def main(argv: list[str] | None = None) -> int:
    """Check every input, then run the app; a refusal is one line and exit code 1 (nothing left in the output)."""
    if argv is not None:  # the SDK reads its arguments (and the HOLOSCAN_* variables) from sys.argv
        sys.argv = list(argv)
    paths = app_paths(sys.argv)
    with refusals(paths.output):
        check_paths(paths)
        prepared = prepare(paths.input, paths.model)
        app = P53HccApp()
        app.prepared = prepared
        app.run()
        raise_failure(app)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())

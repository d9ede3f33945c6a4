"""MONAI Deploy application: the P53 mutation probability of one patient's DCE-MRI DICOM study.

Input (``-i``): a folder with the patient's DICOM study: the arterial (AP), portal-venous (PVP) and delayed (DP)
MR series, a tumour mask per phase (DICOM SEG, or NIfTI ``<phase>_mask.nii.gz``) and optionally ``clinical.json``
(selection rules: ``deploy/README.md``). Models (``-m``): a bundle folder written by ``p53hcc export-bundle``, or a
folder holding it and the frozen study model (``STUDY/model``) as ``study_model/``. Output (``-o``):
``result.json`` and ``result_sr.dcm`` (an Enhanced SR with the probability, the class at the bundle's threshold,
the model version and the input series UIDs; with clinical values and the study model, the combined model's
probability, class and nomogram points too).

Operators: read and check every input (:func:`p53hcc.tools.export.deploy_run.read_study`, nothing scored before
all of it is known to fit), the SDK's ``MonaiBundleInferenceOperator`` with the bundle's ``configs/deploy.json``
and TorchScript network, the combined model (:func:`~p53hcc.tools.export.deploy_run.combined_for`), then both
outputs (:func:`~p53hcc.tools.export.deploy_run.write_outputs`, only once everything exists). A bad input stops
the app with an error naming the series or file, and nothing is written.

Run locally: ``python deploy/app.py -i STUDY_DIR -m MODELS_DIR -o OUT_DIR``.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application, Image, IOType, Operator, OperatorSpec
from monai.deploy.operators.monai_bundle_inference_operator import (
    BundleConfigNames,
    IOMapping,
    MonaiBundleInferenceOperator,
)

from p53hcc.tools.export.deploy_combined import find_models
from p53hcc.tools.export.deploy_run import (
    bundle_result,
    check_inputs,
    combined_for,
    read_study,
    sdk_image,
    write_outputs,
)


class StudyReaderOperator(Operator):
    """The input folder -> the six-channel volume (AP, PVP, DP, masks) as an SDK Image, and the checked inputs."""

    def __init__(self, fragment, *args, input_folder: Path, bundle: Path, study_model: Path | None, **kwargs):
        self.input_folder, self.bundle, self.study_model = Path(input_folder), bundle, study_model
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.output("image")
        spec.output("study")

    def compute(self, op_input, op_output, context):
        study = read_study(self.input_folder)
        check_inputs(study, self.bundle, self.study_model)
        op_output.emit(sdk_image(study.volume), "image")
        study.volume = None  # the bundle operator has its own copy
        op_output.emit(study, "study")


class CombinedOperator(Operator):
    """The bundle's probabilities and the inputs -> the result (DL arm, and the combined model when possible)."""

    def __init__(self, fragment, *args, bundle: Path, study_model: Path | None, **kwargs):
        self.bundle, self.study_model = bundle, study_model
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("pred")
        spec.input("study")
        spec.output("result")

    def compute(self, op_input, op_output, context):
        study = op_input.receive("study")
        result = bundle_result(self.bundle, float(op_input.receive("pred")["probabilities"][1]))
        result = {**result, "dl_note": study.dl_note(), "inputs": study.identities(),
                  **combined_for(study, self.study_model, result["probability"])}
        op_output.emit({"result": result, "evidence": study.evidence}, "result")


class ResultWriterOperator(Operator):
    """The result -> ``result.json`` and ``result_sr.dcm``."""

    def __init__(self, fragment, *args, output_folder: Path, **kwargs):
        self.output_folder = Path(output_folder)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("result")

    def compute(self, op_input, op_output, context):
        got = op_input.receive("result")
        paths = write_outputs(self.output_folder, got["result"], got["evidence"])
        logging.getLogger(__name__).info("P(P53 mutated) = %.6g -> %s", got["result"]["probability"], paths["json"])


class P53HccApp(Application):
    """P53-mutated HCC from three-phase DCE-MRI with an exported p53hcc bundle (and the frozen study model)."""

    def compose(self):
        context = Application.init_app_context(self.argv)
        bundle, study_model = find_models(Path(context.model_path))
        # The SDK wraps the models folder as a generic Model (no network in it); without one the operator loads
        # the bundle folder itself: its configs, its scripts/ and models/model.ts.
        bundle_context = copy.copy(context)
        bundle_context.models = None
        reader = StudyReaderOperator(self, CountCondition(self, 1), input_folder=Path(context.input_path),
                                     bundle=bundle, study_model=study_model, name="study_reader")
        scorer = MonaiBundleInferenceOperator(
            self, input_mapping=[IOMapping("image", Image, IOType.IN_MEMORY)],
            output_mapping=[IOMapping("pred", dict, IOType.IN_MEMORY)],
            bundle_config_names=BundleConfigNames(config_names=["deploy"]), bundle_path=bundle,
            app_context=bundle_context, name="bundle_inference")
        combined = CombinedOperator(self, bundle=bundle, study_model=study_model, name="combined_model")
        writer = ResultWriterOperator(self, output_folder=Path(context.output_path), name="result_writer")
        self.add_flow(reader, scorer, {("image", "image")})
        self.add_flow(reader, combined, {("study", "study")})
        self.add_flow(scorer, combined, {("pred", "pred")})
        self.add_flow(combined, writer, {("result", "result")})


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    P53HccApp().run()

"""MONAI Deploy application: the P53 mutation probability of one patient's DCE-MRI DICOM study.

Input (``-i``): a folder with the patient's DICOM study: the arterial (AP), portal-venous (PVP) and delayed (DP)
MR series and one DICOM SEG tumour mask per phase (selection rules: ``deploy/README.md``). Model (``-m``): a bundle
folder written by ``p53hcc export-bundle``. Output (``-o``): ``result.json`` and ``result_sr.dcm`` (an Enhanced
SR with the probability, the class at the bundle's threshold, the model version and the input series UIDs).

Three operators: read and check the study (:func:`p53hcc.tools.export.deploy_run.read_study`), score it with the
bundle's ``configs/deploy.json`` and TorchScript network (:func:`~p53hcc.tools.export.deploy_run.bundle_inference`),
write both outputs (:func:`~p53hcc.tools.export.deploy_run.write_outputs`, only once the score exists). A bad
input stops the app with an error naming the series, and nothing is written.

Run locally: ``python deploy/app.py -i STUDY_DIR -m BUNDLE_DIR -o OUT_DIR``.
"""
from __future__ import annotations

import logging
from pathlib import Path

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application, Operator, OperatorSpec

from p53hcc.tools.export.deploy_run import bundle_inference, read_study, write_outputs


class StudyReaderOperator(Operator):
    """The input folder -> the six-channel volume (AP, PVP, DP, masks) and the chosen series' identities."""

    def __init__(self, fragment, *args, input_folder: Path, **kwargs):
        self.input_folder = Path(input_folder)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.output("volume")
        spec.output("inputs")

    def compute(self, op_input, op_output, context):
        volume, inputs = read_study(self.input_folder)
        op_output.emit(volume, "volume")
        op_output.emit(inputs, "inputs")


class BundleScoreOperator(Operator):
    """The volume -> the bundle's probability, class and model version."""

    def __init__(self, fragment, *args, bundle: Path, device: str = "cpu", **kwargs):
        self.bundle, self.device = Path(bundle), device
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("volume")
        spec.output("result")

    def compute(self, op_input, op_output, context):
        op_output.emit(bundle_inference(self.bundle, op_input.receive("volume"), self.device), "result")


class ResultWriterOperator(Operator):
    """The result and the input identities -> ``result.json`` and ``result_sr.dcm``."""

    def __init__(self, fragment, *args, output_folder: Path, **kwargs):
        self.output_folder = Path(output_folder)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("result")
        spec.input("inputs")

    def compute(self, op_input, op_output, context):
        inputs = op_input.receive("inputs")
        result = {**op_input.receive("result"), "inputs": {k: v for k, v in inputs.items() if k != "reference_file"}}
        paths = write_outputs(self.output_folder, result, inputs["reference_file"])
        logging.getLogger(__name__).info("P(P53 mutated) = %.6g -> %s", result["probability"], paths["json"])


class P53HccApp(Application):
    """P53-mutated HCC from three-phase DCE-MRI with an exported p53hcc bundle."""

    def compose(self):
        context = Application.init_app_context(self.argv)
        reader = StudyReaderOperator(self, CountCondition(self, 1), input_folder=Path(context.input_path),
                                     name="study_reader")
        scorer = BundleScoreOperator(self, bundle=Path(context.model_path), name="bundle_score")
        writer = ResultWriterOperator(self, output_folder=Path(context.output_path), name="result_writer")
        self.add_flow(reader, scorer, {("volume", "volume")})
        self.add_flow(reader, writer, {("inputs", "inputs")})
        self.add_flow(scorer, writer, {("result", "result")})


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    P53HccApp().run()

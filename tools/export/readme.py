"""An exported bundle's ``docs/README.md`` (the model zoo's section order), its ``docs/data_license.txt`` and the
zoo-style unit test ``ci/unit_tests/test_<name>.py``; every command runs from the bundle root."""
from __future__ import annotations

from p53hcc.tools.schema import ARM_LABELS, NET_LABELS


def _metrics_table(ev: dict) -> str:
    def fmt(v):
        return "n/a (not computable on this cohort)" if v is None else (f"{v:.3f}" if isinstance(v, float) else v)

    ci = ev.get("val_auc_ci95") or [None, None]
    rows = [("AUC (95% DeLong CI)", f"{fmt(ev.get('val_auc'))} ({fmt(ci[0])}-{fmt(ci[1])})"),
            ("accuracy / sensitivity / specificity at the threshold",
             f"{fmt(ev.get('val_accuracy'))} / {fmt(ev.get('val_sensitivity'))} / {fmt(ev.get('val_specificity'))}"),
            ("patients (P53 mutated)", f"{fmt(ev.get('val_n'))} ({fmt(ev.get('val_n_events'))})"),
            ("threshold (training Youden index, out-of-fold)", fmt(ev.get("threshold"))),
            ("training cohort AUC, out-of-fold (fold networks, not these weights)", fmt(ev.get("train_oof_auc")))]
    return "| metric (study validation cohort) | value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)


def _mgpu_evaluate(ff: bool) -> str:
    phase = " --phase pvp" if ff else ""
    return ("Multi-GPU evaluation (DDP) of a trained network:\n```bash\ntorchrun --nproc_per_node=2 -m monai.bundle run "
            "--config_file \"['configs/train.json','configs/evaluate.json','configs/multi_gpu_evaluate.json']\" "
            f"--dataset_dir /data/study --fold 0{phase} --work_dir /data/train\n```\n")


def readme(name: str, arm: str, net: str, version: str, meta: dict, params: dict, n4_params: dict,
           study_name: str, mgpu_evaluate: bool = False) -> str:
    """The bundle's ``docs/README.md`` (Authors, Tags, Model Description, Data, Performance, Additional Usage
    Steps, System Configuration, Limitations, Citation Info, References, License), commands relative to the
    bundle root."""
    s = int(params["spatial_size"])
    stem = " (MONAI, standard 7x7 stride-2 stem)" if net.startswith(("resnet", "densenet")) else (
        " (p53hcc's classifier around MONAI's encoder)" if net in ("vit", "swin") else " (MONAI)")
    ff = arm == "ff"
    train_extra = " --phase pvp" if ff else ""
    ff_note = ("\nThe FF model in `models/model.pt` is the three phase networks and the study's fitted head as one "
               "network (`scripts/ffnet.py`); `configs/train.json` trains one phase network (`--phase ap|pvp|dp`) as "
               "the study did; assembling three of them with a newly fitted head is what `p53hcc export-bundle` does "
               "from a p53hcc study.\n" if ff else "")
    return f"""# {meta['name']}

### **Authors**
p53hcc project contributors (exported from the p53hcc study `{study_name}` with p53hcc, bundle version {version}).

### **Tags**
Classification, MR, DCE-MRI, Liver, Hepatocellular carcinoma, P53, Radiogenomics

## **Model Description**
{meta['description']}

Arm: {ARM_LABELS[arm]}; network: {NET_LABELS[net]}{stem}; input: three {s}x{s}
crops (AP, PVP, DP); output: two logits, whose softmax is [P(wild type), P(mutated)]. The class is "mutated" when
P(mutated) >= the threshold in `configs/inference.json` (`threshold`, the training cohort's Youden index).
{ff_note}
## **Data**
{meta['data_source']}.

Inputs per patient: the three phases (DICOM series folders, NIfTI, NRRD) and a tumour mask per phase (DICOM SEG
with a frame per slice, or a label volume on the phase's grid), listed in a `datalist.json`:
`{{"predict": [{{"patient_id": "P1", "ap": "P1/ap", "pvp": "P1/pvp", "dp": "P1/dp", "ap_mask": "P1/ap_seg.dcm",
"pvp_mask": "...", "dp_mask": "..."}}]}}` (paths relative to the datalist's folder; sections `training`,
`validation`, `external`, `predict`).

#### **Preprocessing**
As in the exporting study, on raw images: RAS orientation, N4 bias-field correction (`n4_params`:
{n4_params}), resampling to {params['pixdim']} mm, z-score over the body (non-zero voxels); then per phase the
axial slice with the largest mask area, the mask's bounding box + {params['margin']} px, resize to {s}x{s},
z-score. Set `--n4 false` when the datalist points at volumes already preprocessed this way.

## **Performance**
The shipped weights are the study's full-training-cohort networks; their scores on the study's validation
cohort (never used for fitting or for choosing):

{_metrics_table(meta['eval_metrics'])}

`configs/metadata.json` (`eval_metrics`) holds the same numbers. They describe the exporting study's cohort only;
on a synthetic cohort they say nothing about real patients.

## **Additional Usage Steps**
Run every command from this folder (the bundle root), or from anywhere with `--bundle_root PATH/TO/{name}` (the
configs load the bundle's `scripts/` from `bundle_root` themselves). Outputs, caches and trained networks go to
`--work_dir` (default `~/p53hcc-work/{name}`), never into the bundle.

Sample data (synthetic volumes and masks of 10 patients and their `datalist.json`, for trying the commands and
for the unit tests; they carry no information about P53):
```bash
python scripts/sample_data.py /data/sample
```

Inference on the `predict` section of `/data/new/datalist.json` -> `/data/out/eval/predictions.csv`
(`patient_id, label, score, predicted_class`):
```bash
python -m monai.bundle run --config_file configs/inference.json --dataset_dir /data/new --infer_part predict --work_dir /data/out
```
In-memory inference (MONAI Deploy's `MonaiBundleInferenceOperator` with `config_names="deploy"`, or Python):
`configs/deploy.json` takes one volume `image` whose six channels are AP, PVP, DP and their masks on one grid
(MetaTensor with its affine; `metadata.json` `deploy_data_format`) and has no file I/O:
```python
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor

parser = ConfigParser()
parser.read_config("configs/deploy.json")
x = parser.get_parsed_content("preprocessing")({{"image": volume}})["image"]  # volume: MetaTensor [6, X, Y, Z]
net = torch.jit.load("models/model.ts").eval()
p = parser.get_parsed_content("postprocessing")({{"pred": net(x[None].float())[0]}})["pred"][1]  # P(mutated)
```
Train one network{' (one phase)' if ff else ''} as the study did (`--fold -1`: all training patients) ->
`/data/train/models/{'pvp/' if ff else ''}model.pt`:
```bash
python -m monai.bundle run --config_file configs/train.json --dataset_dir /data/study --fold -1{train_extra} --work_dir /data/train
```
Evaluate a trained fold network (`val_auc` in `/data/train/eval/{'pvp/' if ff else ''}metrics.csv`):
```bash
python -m monai.bundle run --config_file "['configs/train.json','configs/evaluate.json']" --dataset_dir /data/study --fold 0{train_extra} --work_dir /data/train
```
Multi-GPU training (DDP):
```bash
torchrun --nproc_per_node=2 -m monai.bundle run --config_file "['configs/train.json','configs/multi_gpu_train.json']" --dataset_dir /data/study{train_extra} --work_dir /data/train
```
{_mgpu_evaluate(ff) if mgpu_evaluate else ""}Checks (the model zoo's):
```bash
python -m monai.bundle verify_metadata --meta_file configs/metadata.json --filepath eval/schema.json
python -m monai.bundle verify_net_in_out network_def --meta_file configs/metadata.json --config_file configs/inference.json
python -m monai.bundle ckpt_export network_def --filepath models/verify_model.ts --ckpt_file models/model.pt --meta_file configs/metadata.json --config_file configs/inference.json
```
The code the configs use is in `scripts/` (generated from p53hcc; the bundle does not need p53hcc installed).

## **System Configuration**
Trained on the exporting study's machine; inference runs on a CPU (a few seconds per patient, N4 dominating) or a
CUDA GPU (`--device cuda`). Packages: `configs/metadata.json` (`required_packages_version`).

TensorRT: not provided. The network scores one stack of three 2D crops per patient, milliseconds on a CPU; the
time goes to reading, N4 bias correction and resampling, which TensorRT does not accelerate. There is no
`configs/inference_trt.json` and no TensorRT benchmark.

Publishing: the weights (`models/model.pt`, `models/model.ts`) are listed in `large_files.yml` with their MD5;
the model zoo keeps files over 25 MB out of its repository and downloads them from the URLs there.

## **Limitations**
Research use only; not a medical device and not for clinical decisions. The weights were fitted to one study's
cohort (see Data); their performance elsewhere is unknown until validated there. Masks must outline the tumour on
each phase; the three phases of the deploy input must share one grid.

## **Citation Info**
Cite the original study (References) and p53hcc.

## **References**
""" + "\n".join(f"[{i + 1}] {r}" for i, r in enumerate(meta["references"])) + """

## **License**
Code and weights: Apache License 2.0 (`LICENSE`). Data: `docs/data_license.txt`.
"""


def data_license(data_source: str, synthetic: bool) -> str:
    """``docs/data_license.txt``: the terms of the data the weights were trained on."""
    if synthetic:
        return ("The weights of this bundle were trained on synthetic images generated by p53hcc (p53hcc synth); "
                "they contain no patient data. The synthetic data are released under the Apache License 2.0, like "
                "p53hcc.\n")
    return (f"The weights of this bundle were trained on: {data_source}.\nThe terms under which these data may be "
            "used and shared are set by their owner; the exporting institution must fill them in here before this "
            "bundle is shared.\n")


LICENSE_HEADER = """# Copyright (c) p53hcc project contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""


def sample_data_script() -> str:
    """``scripts/sample_data.py``: synthetic sample data in the layout the bundle's configs read (the zoo asks a
    bundle to ship or generate sample data; the unit tests use it)."""
    return LICENSE_HEADER + '''"""Synthetic sample data for this bundle: three-phase volumes with a bright sphere, its masks, a datalist.

Usage: ``python scripts/sample_data.py OUT_DIR [--n 10]`` writes ``OUT_DIR/datalist.json`` (``training``: folds 0 and
1, ``predict``: the last two patients) and a NIfTI volume and mask per patient and phase. The images are made up:
they exercise the configs (shapes, files, steps), they say nothing about P53.
"""

import argparse
import json
import os

import numpy as np
import SimpleITK as sitk  # noqa: N813

PHASES = ("ap", "pvp", "dp")
SPACING = (1.5, 1.5, 4.0)


def write_volume(path, array, spacing=SPACING):
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, path)


def write_sample_data(out, n=10, seed=0, shape=(32, 32, 8)):
    """Write ``n`` patients (the last two to ``predict``) under ``out``; returns the datalist's path."""
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in shape], indexing="ij"))
    datalist = {"training": [], "validation": [], "external": [], "predict": []}
    for i in range(n):
        pid, label = f"P{i:03d}", i % 2
        centre = np.array(shape) / 2 + rng.uniform(-2, 2, 3)
        mask = (np.sqrt((((grid.T - centre) * SPACING) ** 2).sum(-1)).T < 9).astype(np.uint8)
        item = {"patient_id": pid, "label": label, "fold": i % 2 if i < n - 2 else -1}
        for phase in PHASES:
            image = rng.normal(100, 5, mask.shape) + mask * (30 + 20 * label)
            write_volume(os.path.join(out, f"{pid}_{phase}.nii.gz"), image.astype(np.float32))
            write_volume(os.path.join(out, f"{pid}_{phase}_mask.nii.gz"), mask)
            item[phase] = f"{pid}_{phase}.nii.gz"
            item[f"{phase}_mask"] = f"{pid}_{phase}_mask.nii.gz"
        datalist["training" if i < n - 2 else "predict"].append(item)
    path = os.path.join(out, "datalist.json")
    with open(path, "w") as f:
        json.dump(datalist, f, indent=2)
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--n", type=int, default=10)
    args = parser.parse_args()
    print(write_sample_data(args.out, args.n))
'''


_SAMPLE_DATA = '''

BUNDLE_ROOT = "models/{name}"


def sample_data(out):
    """The bundle's own sample-data generator (scripts/sample_data.py), loaded from its file."""
    spec = importlib.util.spec_from_file_location("sample_data", os.path.join(BUNDLE_ROOT, "scripts/sample_data.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_sample_data(out)


class SampleDataCase(unittest.TestCase):
    """A test with the bundle's sample data in ``dataset_dir`` and an empty ``work_dir``."""

    def setUp(self):
        self.dataset_dir = tempfile.mkdtemp()
        self.work_dir = tempfile.mkdtemp()
        sample_data(self.dataset_dir)

    def tearDown(self):
        shutil.rmtree(self.dataset_dir)
        shutil.rmtree(self.work_dir)
'''


def _test_module(name: str, imports: list[str], body: str) -> str:
    """A zoo unit test: licence header, the imports (isort orders them), the shared sample-data helper, ``body``."""
    common = ["import importlib.util", "import os", "import shutil", "import tempfile", "import unittest", "",
              "import torch"]
    return LICENSE_HEADER + "\n" + "\n".join(common + imports) + _SAMPLE_DATA.format(name=name) + body


def unit_test(name: str, arm: str) -> str:
    """``ci/unit_tests/test_<name>.py``: the bundle's configs on its sample data, in the model zoo's style. No
    ``sys.path`` change: the configs load the bundle's ``scripts`` from ``bundle_root`` themselves."""
    phase = ', "phase": "pvp"' if arm == "ff" else ""
    return _test_module(name, ["import json", "from monai.bundle import ConfigParser, ConfigWorkflow",
                               "from utils import check_workflow"], f'''

TEST_CASE_TRAIN = [{{"bundle_root": BUNDLE_ROOT, "epochs": 1, "spatial_size": 32, "batch_size": 4, "fold": 0{phase}}}]
TEST_CASE_INFER = [{{"bundle_root": BUNDLE_ROOT, "infer_part": "predict"}}]


def test_order(test_name1, test_name2):
    def get_order(name):
        if "train" in name:
            return 1
        if "infer" in name:
            return 2
        return 3

    return get_order(test_name1) - get_order(test_name2)


class TestP53HccBundle(SampleDataCase):
    def workflow(self, workflow_type, configs, override):
        override = {{**override, "dataset_dir": self.dataset_dir, "work_dir": self.work_dir, "device": "cpu"}}
        return ConfigWorkflow(
            workflow_type=workflow_type,
            config_file=[os.path.join(BUNDLE_ROOT, "configs", c) for c in configs],
            logging_file=os.path.join(BUNDLE_ROOT, "configs/logging.conf"),
            meta_file=os.path.join(BUNDLE_ROOT, "configs/metadata.json"),
            **override,
        )

    def test_train_eval_config(self):
        for override in TEST_CASE_TRAIN:
            check_workflow(self.workflow("train", ["train.json"], override), check_properties=True)
            check_workflow(self.workflow("train", ["train.json", "evaluate.json"], override), check_properties=True)

    def test_infer_config(self):
        with open(os.path.join(BUNDLE_ROOT, "configs/inference.json")) as f:
            threshold = json.load(f).get("threshold")  # None: no operating point, no predicted class
        for override in TEST_CASE_INFER:
            scores = os.path.join(self.work_dir, "scores.csv")
            check_workflow(self.workflow("infer", ["inference.json"], {{**override, "predictions_path": scores}}), True)
            with open(scores) as f:
                rows = f.read().strip().splitlines()
            self.assertEqual(len(rows), 3)
            header = "patient_id,label,score" + (",predicted_class" if threshold is not None else "")
            self.assertEqual(rows[0], header)

    def test_deploy_config_in_memory(self):
        parser = ConfigParser()
        parser.read_config(os.path.join(BUNDLE_ROOT, "configs/deploy.json"))
        parser.update({{"bundle_root": BUNDLE_ROOT, "device": "cpu"}})
        item = ConfigParser.load_config_file(os.path.join(self.dataset_dir, "datalist.json"))["predict"][0]
        from monai.transforms import LoadImaged

        reader = parser.get_parsed_content("p53").SeriesSpacingReader()  # the reader the bundle's inference uses
        keys = ["ap", "pvp", "dp", "ap_mask", "pvp_mask", "dp_mask"]
        data = LoadImaged(keys, reader=reader, image_only=True, ensure_channel_first=True)(
            {{k: os.path.join(self.dataset_dir, item[k]) for k in keys}}
        )
        x = parser.get_parsed_content("preprocessing")({{"image": torch.cat([data[k] for k in keys])}})["image"]
        net = torch.jit.load(os.path.join(BUNDLE_ROOT, "models/model.ts")).eval()
        with torch.no_grad():
            pred = parser.get_parsed_content("postprocessing")({{"pred": net(x[None].float())[0]}})["pred"]
        self.assertEqual(tuple(pred.shape), (2,))
        self.assertAlmostEqual(float(pred.sum()), 1.0, places=5)


if __name__ == "__main__":
    loader = unittest.TestLoader()
    loader.sortTestMethodsUsing = test_order
    unittest.main(testLoader=loader)
''')


def unit_test_dist(name: str, arm: str) -> str:
    """``ci/unit_tests/test_<name>_dist.py``: ``multi_gpu_train.json`` under torchrun, as the zoo's multi-GPU
    tests run it (one process per GPU; two gloo processes on a machine without one)."""
    phase = ', "phase": "pvp"' if arm == "ff" else ""
    return _test_module(name, ["from utils import export_config_and_run_mgpu_cmd"], f'''

TEST_CASE_1 = [{{"bundle_root": BUNDLE_ROOT, "epochs": 1, "spatial_size": 32, "batch_size": 2, "fold": 0{phase}}}]


class TestP53HccBundleMGPU(SampleDataCase):
    def test_train_mgpu_config(self):
        for override in TEST_CASE_1:
            override = {{**override, "dataset_dir": self.dataset_dir, "work_dir": self.work_dir,
                        "ckpt_dir": os.path.join(self.work_dir, "models")}}
            export_config_and_run_mgpu_cmd(
                config_file=[os.path.join(BUNDLE_ROOT, "configs", c) for c in ("train.json", "multi_gpu_train.json")],
                logging_file=os.path.join(BUNDLE_ROOT, "configs/logging.conf"),
                meta_file=os.path.join(BUNDLE_ROOT, "configs/metadata.json"),
                override_dict=override,
                output_path=os.path.join(self.work_dir, "train_override.json"),
                ngpu=torch.cuda.device_count() or 2,
            )
            self.assertTrue(os.path.isfile(os.path.join(self.work_dir, "models", "model.pt")))


if __name__ == "__main__":
    unittest.main()
''')

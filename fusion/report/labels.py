"""Display names of the study's models, as the paper prints them (MC3_ResNet34, DL_ResNet101, Combined model)."""
from __future__ import annotations

from p53hcc.tools.schema import NET_LABELS

BASE_LABELS = {"clinical": "Clinical model", "radiomics": "Radiomics model", "dl": "DL model",
               "combined": "Combined model"}


def model_label(model: str) -> str:
    """Paper-style name of a model id (``mc_resnet34`` -> ``MC3_ResNet34``, ``ff_resnet101`` -> ``DL_ResNet101``)."""
    arm, _, net = model.partition("_")
    if arm in ("mc", "ff") and net:
        return f"{'MC3' if arm == 'mc' else 'DL'}_{NET_LABELS.get(net, net)}"
    return BASE_LABELS.get(model, model)

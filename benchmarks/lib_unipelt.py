from minilm import load

import unipelt

INFERENCE = {
    "lora": unipelt.merge,
    "prefix": unipelt.fold,
    "unipelt-ap": unipelt.fold,
    "unipelt-apl": unipelt.fold,
    "mam": unipelt.fold,
}


def build(method):
    model = load()
    if method == "frozen":
        model.requires_grad_(False)
        model.classifier.requires_grad_(True)
        return model, 0, None
    unipelt.apply(model, method)
    return model, unipelt.count_parameters(model)["total"], INFERENCE.get(method)

"""RoBERTa: BERT's module layout; its classification head (dense + tanh + out_proj) lives outside
the base model and is trained whole. The prompt follows <s>, as it follows BERT's [CLS]."""

from dataclasses import replace

from . import register
from .bert import BERT

ROBERTA = register(replace(BERT, model_types=("roberta", "xlm-roberta")))

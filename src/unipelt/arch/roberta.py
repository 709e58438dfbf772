"""RoBERTa: BERT's module layout; its classification head lives outside the base model."""

from dataclasses import replace

from . import register
from .bert import BERT

ROBERTA = register(replace(BERT, model_types=("roberta", "xlm-roberta"), head_in_base=()))

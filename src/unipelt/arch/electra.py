"""ELECTRA: BERT's module layout (``attention.self``, ``attention.output``, ``intermediate``,
``output``). Its classification head reads the first token, so the prompt follows [CLS] as in BERT.

ELECTRA-small's embeddings are narrower than its layers (``embedding_size`` 128, hidden 256) and
an ``embeddings_project`` linear widens them: prompt tuning inserts at ``embeddings``, so it needs
``embedding_size == hidden_size`` (ELECTRA-base and -large); other methods work on every size.
"""

from dataclasses import replace

from . import register
from .bert import BERT

ELECTRA = register(replace(BERT, model_types=("electra",)))

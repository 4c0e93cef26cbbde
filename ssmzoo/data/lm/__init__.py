"""Language modelling on text files: corpora read as streams of documents (``corpus.py``), byte and BPE
tokenizers that count the bytes each token covers (``tokenizer.py``), a tokenized on-disk cache split by
document and the windows cut from it (``tokens.py``), the datamodule (``datamodule.py``) and the
``ssmzoo data shakespeare`` command that fetches the default corpus (``shakespeare.py``)."""

from . import corpus, shakespeare, tokens
from .corpus import documents
from .datamodule import TextDataModule
from .tokenizer import BPETokenizer, ByteTokenizer, train_bpe
from .tokens import WindowDataset, collate_windows, cu_seqlens

__all__ = ["corpus", "shakespeare", "tokens", "BPETokenizer", "ByteTokenizer", "TextDataModule", "WindowDataset", "collate_windows", "cu_seqlens",
           "documents", "train_bpe"]

"""Text corpora, tokenizers and batching for the language-model and sequence-to-sequence experiments.

Modules, one concern each:

* :mod:`~jdlfs.text.reuters` -- Reuters-21578 SGML reader (:func:`load_reuters`,
  :func:`read_reuters_file`): title, body, LEWISSPLIT split, NEWID; entities
  unescaped, control characters and the ``Reuter`` signature removed.
* :mod:`~jdlfs.text.multi30k` -- Multi30k English-German, line-aligned gzip
  files (:func:`load_multi30k`): train / val / test_2016_flickr /
  test_2017_flickr / test_2017_mscoco.
* :mod:`~jdlfs.text.ag_news` -- AG News CSV (:func:`load_ag_news`): label,
  title, description, the dataset's backslash and entity escapes undone.
* :mod:`~jdlfs.text.subword` -- :class:`SubwordTokenizer`, sentencepiece
  trained deterministically on the texts you give it (the training split),
  saved to a model file and reloaded for evaluation.
* :mod:`~jdlfs.text.chars` -- :class:`CharVocab`, a character vocabulary
  (JSON file) for the character models.
* :mod:`~jdlfs.text.specials` -- the fixed special ids.
* :mod:`~jdlfs.text.batching` -- :func:`pad_to`, :func:`bucket_batches`
  (length buckets, few compiled shapes), :func:`lm_windows` (truncated BPTT).
* :mod:`~jdlfs.text.files`, :mod:`~jdlfs.text.errors` -- where corpora are
  looked for, reading with errors that name file and line.

Special ids, the same for both tokenizers: **PAD = 0, BOS = 1, EOS = 2,
UNK = 3**; ordinary tokens start at 4. ``decode`` stops at the first EOS and
drops PAD and BOS.

Data directory: every loader takes ``data_dir`` and defaults to
``$JDLFS_DATA_DIR``, like :mod:`jdlfs.data`; corpora sit in its
``reuters21578/``, ``multi30k/``, ``ag_news/`` folders (in this project
``../shared/data``, see its README). A missing file is a
:class:`CorpusNotFoundError` (a ``FileNotFoundError`` naming the path); a
malformed one a :class:`TextFormatError` (a ``ValueError``, and a
:class:`jdlfs.data.DataFormatError`) naming the file and line -- never a
silently shorter corpus.

Translation (Multi30k German -> English)::

    from jdlfs.text import load_multi30k, SubwordTokenizer, bucket_batches, EOS_ID
    de, en = load_multi30k("train")
    tok = SubwordTokenizer.train(de + en, out / "spm.model", vocab_size=8000)   # training split only
    src = tok.encode(de, add_eos=True)
    tgt = tok.encode(en, add_bos=True, add_eos=True)
    for (s, t), idx in bucket_batches(key, (src, tgt), 128, return_indices=True):
        ...   # s, t: int32 (128, L), L in (16, 32, 64, 128); decoder input t[:, :-1], labels t[:, 1:]
    tok = SubwordTokenizer.load(out / "spm.model")                               # for evaluation
    hypotheses = tok.decode(greedy_ids)                                          # list of str

Headlines (Reuters body -> title)::

    docs = load_reuters(split="train")
    pairs = [(d.body, d.title) for d in docs if d.has_title_and_body]

Character language model (Reuters bodies)::

    train = "\\n".join(d.body for d in load_reuters(split="train") if d.body)
    vocab = CharVocab.build([train])                                   # the separator "\\n" included
    stream = vocab.encode_array(train)
    inputs, targets = lm_windows(stream, batch_size=64, window=128)   # (K, 64, 128) each
"""

from jdlfs.text.ag_news import AG_NEWS_CLASSES, AG_NEWS_SPLITS, NewsArticle, load_ag_news, read_ag_news_csv
from jdlfs.text.batching import DEFAULT_BUCKETS, bucket_batches, bucket_of, lm_windows, pad_to
from jdlfs.text.chars import CharVocab
from jdlfs.text.errors import CorpusNotFoundError, TextFormatError
from jdlfs.text.multi30k import MULTI30K_LINES, MULTI30K_SPLITS, load_multi30k, read_aligned, read_lines
from jdlfs.text.reuters import (
    LEWIS_SPLITS,
    REUTERS_DOCUMENTS,
    REUTERS_FILES,
    ReutersDocument,
    load_reuters,
    read_reuters_file,
)
from jdlfs.text.specials import BOS_ID, EOS_ID, NUM_SPECIALS, PAD_ID, SPECIAL_PIECES, UNK_ID
from jdlfs.text.subword import SubwordTokenizer

__all__ = [
    "AG_NEWS_CLASSES",
    "AG_NEWS_SPLITS",
    "BOS_ID",
    "DEFAULT_BUCKETS",
    "EOS_ID",
    "LEWIS_SPLITS",
    "MULTI30K_LINES",
    "MULTI30K_SPLITS",
    "NUM_SPECIALS",
    "PAD_ID",
    "REUTERS_DOCUMENTS",
    "REUTERS_FILES",
    "SPECIAL_PIECES",
    "UNK_ID",
    "CharVocab",
    "CorpusNotFoundError",
    "NewsArticle",
    "ReutersDocument",
    "SubwordTokenizer",
    "TextFormatError",
    "bucket_batches",
    "bucket_of",
    "lm_windows",
    "load_ag_news",
    "load_multi30k",
    "load_reuters",
    "pad_to",
    "read_ag_news_csv",
    "read_aligned",
    "read_lines",
    "read_reuters_file",
]

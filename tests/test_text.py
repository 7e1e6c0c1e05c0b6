"""Tests for jdlfs.text: corpus readers, tokenizers, batching.

Small files in each corpus's real on-disk format (Reuters-21578 SGML in
Latin-1 with entities, control codes and the wire signature; Multi30k gzip
line pairs; AG News CSV with its escapes) are written to ``tmp_path`` and
parsed back exactly; malformed files must fail naming file and line. The
last tests read the real corpora when they are found (``$JDLFS_DATA_DIR``,
else ``../shared/data``: see ``conftest.py``) and skip otherwise.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import re
from pathlib import Path

import jax
import numpy as np
import pytest
import sentencepiece as spm

import jdlfs.text as text
from jdlfs.data import DataFormatError
from jdlfs.text import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    CharVocab,
    CorpusNotFoundError,
    SubwordTokenizer,
    TextFormatError,
    bucket_batches,
    lm_windows,
    pad_to,
)

# Captured at import, before the fixture below clears it for the other tests.
REAL_DATA_DIR = os.environ.get("JDLFS_DATA_DIR") or None


@pytest.fixture(autouse=True)
def _no_ambient_data_dir(monkeypatch):
    monkeypatch.delenv("JDLFS_DATA_DIR", raising=False)


# =========================================================================== Reuters-21578

DOCTYPE = '<!DOCTYPE lewis SYSTEM "lewis.dtd">\n'


def reuters_doc(
    newid,
    split="TRAIN",
    *,
    title=None,
    body=None,
    dateline=None,
    text_type=None,
    topics=("cocoa",),
    topics_attr="YES",
    extra_text="",
):
    """One <REUTERS> document in the distribution's layout (a str; encode as Latin-1)."""
    d = "".join(f"<D>{t}</D>" for t in topics)
    type_attr = f' TYPE="{text_type}"' if text_type else ""
    parts = [
        f'<REUTERS TOPICS="{topics_attr}" LEWISSPLIT="{split}" CGISPLIT="TRAINING-SET" OLDID="{5000 + newid}" '
        f'NEWID="{newid}">\n',
        "<DATE>26-FEB-1987 15:01:01.79</DATE>\n",
        f"<TOPICS>{d}</TOPICS>\n<PLACES><D>usa</D></PLACES>\n<PEOPLE></PEOPLE>\n<ORGS></ORGS>\n",
        "<EXCHANGES></EXCHANGES>\n<COMPANIES></COMPANIES>\n",
        "<UNKNOWN> \n&#5;&#5;&#5;C T\n&#22;&#22;&#1;f0704&#31;reute\nu f BC-X   02-26 0105</UNKNOWN>\n",
        f"<TEXT{type_attr}>&#2;\n",
    ]
    if title is not None:
        parts.append(f"<TITLE>{title}</TITLE>\n")
    if dateline is not None:
        parts.append(f"<DATELINE>{dateline}</DATELINE>")
    if body is not None:
        parts.append(f"<BODY>{body}</BODY>")
    parts.append(extra_text)
    parts.append("</TEXT>\n</REUTERS>\n")
    return "".join(parts)


BODY_1 = (
    "Showers continued throughout the week in\n"
    "the Bahia cocoa zone, &lt;Caf\xe9 Co&gt; said &amp; To&#127;day\x7f's\n"
    "arrivals were 155,221 bags.\n"
    "    The dry period means the temporao will\n"
    "be late this year.\n"
    "    Shr 21 cts vs 18 cts\n"
    " Reuter\n&#3;"
)
DOC_1 = reuters_doc(
    1, title="STANDARD OIL &lt;SRD> TO FORM\nFINANCIAL UNIT", dateline="    SALVADOR, Feb 26 - ", body=BODY_1
)
DOC_2 = reuters_doc(
    2,
    "TEST",
    text_type="BRIEF",
    title="ASSETS OF MONEY MARKET FUNDS ROSE",
    extra_text="Blah blah blah.\n&#3;\n\n",
    topics=(),
    topics_attr="NO",
)
DOC_3 = reuters_doc(
    3,
    "NOT-USED",
    text_type="UNPROC",
    extra_text="FEDERAL RESERVE WEEKLY REPORT\n Net free reserves....644 vs 1,337\n&#3;",
)


def write_sgm(path: Path, content: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode("latin-1"))
    return path


def test_reuters_file_parsed_exactly(tmp_path):
    path = write_sgm(tmp_path / "reut2-000.sgm", DOCTYPE + DOC_1 + DOC_2 + DOC_3)
    d1, d2, d3 = text.read_reuters_file(path)

    assert (d1.newid, d1.split, d1.text_type, d1.topics, d1.topics_attr) == (1, "train", "NORM", ("cocoa",), "YES")
    assert d1.title == "STANDARD OIL <SRD> TO FORM FINANCIAL UNIT"
    assert d1.dateline == "SALVADOR, Feb 26"
    assert d1.body == (
        "Showers continued throughout the week in the Bahia cocoa zone, <Caf\xe9 Co> said & Today's "
        "arrivals were 155,221 bags. The dry period means the temporao will be late this year. "
        "Shr 21 cts vs 18 cts"
    )
    assert d1.has_title_and_body and d1.modapte_split == "train"
    assert (d1.path, d1.line) == (str(path), 2)

    assert (d2.newid, d2.split, d2.text_type) == (2, "test", "BRIEF")
    assert d2.title == "ASSETS OF MONEY MARKET FUNDS ROSE" and d2.body == "" and not d2.has_title_and_body
    assert d2.topics == () and d2.modapte_split == "unused"  # TOPICS="NO"

    assert (d3.newid, d3.split, d3.text_type, d3.title, d3.body) == (3, "not-used", "UNPROC", "", "")
    assert d3.line == 2 + DOC_1.count("\n") + DOC_2.count("\n")


def test_reuters_whitespace_modes(tmp_path):
    path = write_sgm(tmp_path / "reut2-000.sgm", DOC_1)
    para = text.read_reuters_file(path, whitespace="paragraphs")[0].body
    assert para.split("\n") == [
        "Showers continued throughout the week in the Bahia cocoa zone, <Caf\xe9 Co> said & Today's arrivals were "
        "155,221 bags.",
        "The dry period means the temporao will be late this year.",
        "Shr 21 cts vs 18 cts",
    ]
    keep = text.read_reuters_file(path, whitespace="keep")[0].body
    assert keep.startswith("Showers continued throughout the week in\nthe Bahia")
    assert keep.endswith("late this year.\n    Shr 21 cts vs 18 cts")
    with pytest.raises(ValueError, match="whitespace"):
        text.read_reuters_file(path, whitespace="squash")


@pytest.mark.parametrize(
    "ending, expected",
    [
        ("last words.\n Reuter\n&#3;", "last words."),
        ("last words.\n REUTER\n\n\n&#3;", "last words."),
        ("last words.\n reuter...^M\n&#3;", "last words."),
        ("last words.\nREUTER\n Reuter\n&#3;", "last words."),  # signed twice
        ("last words.\n REUTER11:43/VB\n&#3;", "last words."),
        ("last words.\n REUTE\n&#3;", "last words."),
        ("confidence for\nthe future. REUTER\n&#3;", "confidence for the future."),
        ("a bank official told\nReuters.\n&#3;", "a bank official told Reuters."),  # a sentence, kept
        ("he said.\n More\n&#3;", "he said. More"),  # no signature
        ("2.80 DLRS A&#27;[B SHARE\x03\n Reuter\n&#3;", "2.80 DLRS A SHARE"),  # ESC [ B, raw control byte
    ],
)
def test_reuters_signature_and_controls_removed(tmp_path, ending, expected):
    path = write_sgm(tmp_path / "reut2-000.sgm", reuters_doc(1, title="T", body=ending))
    assert text.read_reuters_file(path)[0].body == expected


def test_reuters_latin1_byte_kept(tmp_path):
    # reut2-017.sgm holds one non-ASCII byte (0xFC); it must decode as u-umlaut, not fail as UTF-8.
    path = tmp_path / "reut2-000.sgm"
    path.write_bytes(reuters_doc(1, title="T", body="growth.\xfc&#5;&#30;side measures").encode("latin-1"))
    assert text.read_reuters_file(path)[0].body == "growth.\xfcside measures"


def _lines_of(s: str, needle: str, nth: int = 0) -> int:
    pos = -1
    for _ in range(nth + 1):
        pos = s.index(needle, pos + 1)
    return s.count("\n", 0, pos) + 1


GOOD = DOCTYPE + DOC_1 + DOC_2 + DOC_3


@pytest.mark.parametrize(
    "name, content, line, match",
    [
        (
            "unterminated REUTERS",
            GOOD[: GOOD.rindex("</REUTERS>")],
            _lines_of(GOOD, "<REUTERS", 2),
            "unterminated <REUTERS>",
        ),
        ("unterminated BODY", GOOD.replace("</BODY>", "", 1), _lines_of(GOOD, "<BODY>"), "unterminated <BODY>"),
        ("unterminated TITLE", GOOD.replace("</TITLE>", "", 1), _lines_of(GOOD, "<TITLE>"), "unterminated <TITLE>"),
        ("missing /REUTERS", GOOD.replace("</REUTERS>", "", 1), _lines_of(GOOD, "<REUTERS", 1), "not closed"),
        ("stray /BODY", GOOD.replace("<BODY>", "", 1), _lines_of(GOOD, "</BODY>"), "without a preceding <BODY>"),
        (
            "two TITLEs",
            GOOD.replace("<BODY>", "<BODY><TITLE>X</TITLE>", 1),
            _lines_of(GOOD, "<BODY>"),
            "second <TITLE>",
        ),
        (
            "text outside",
            GOOD.replace("</REUTERS>\n", "</REUTERS>\ngarbage\n", 1),
            _lines_of(GOOD, "<REUTERS", 1),
            "outside any <REUTERS>",
        ),
        (
            "cut inside a tag",
            GOOD[: GOOD.index("<REUTERS", GOOD.index('NEWID="2"')) + 20],
            _lines_of(GOOD, "<REUTERS", 2),
            "unterminated <REUTERS tag",
        ),
        ("no LEWISSPLIT", GOOD.replace('LEWISSPLIT="TEST" ', "", 1), _lines_of(GOOD, "<REUTERS", 1), "LEWISSPLIT"),
        ("no TEXT", GOOD.replace("<TEXT>", "", 1).replace("</TEXT>", "", 1), _lines_of(GOOD, "<REUTERS"), "<TEXT>"),
        ("empty file", "", None, "no <REUTERS> documents"),
    ],
)
def test_reuters_malformed_file_names_file_and_line(tmp_path, name, content, line, match):
    path = write_sgm(tmp_path / "reut2-000.sgm", content)
    with pytest.raises(TextFormatError, match=match) as info:
        text.read_reuters_file(path)
    err = info.value
    assert err.path == str(path) and err.line == line
    assert str(err).startswith(str(path) if line is None else f"{path}, line {line}:")
    assert isinstance(err, ValueError) and isinstance(err, DataFormatError)
    assert str(pickle.loads(pickle.dumps(err))) == str(err)


def _write_corpus(root: Path, per_file: list[list[int]], sub="reuters21578") -> None:
    for i, newids in enumerate(per_file):
        docs = "".join(
            reuters_doc(n, "TRAIN" if n % 2 else "TEST", title=f"T{n}", body=f"body {n}\n Reuter") for n in newids
        )
        write_sgm(root / sub / f"reut2-{i:03d}.sgm", DOCTYPE + docs)


@pytest.mark.parametrize("sub", ["reuters21578", "reuters-21578", "."])
def test_load_reuters_across_files_and_split(tmp_path, sub):
    _write_corpus(tmp_path, [[1, 2], [3]], sub=sub)
    docs = text.load_reuters(tmp_path, num_files=2)
    assert [(d.newid, d.split, d.title, d.body) for d in docs] == [
        (1, "train", "T1", "body 1"),
        (2, "test", "T2", "body 2"),
        (3, "train", "T3", "body 3"),
    ]
    assert [d.newid for d in text.load_reuters(tmp_path, split="train", num_files=2)] == [1, 3]
    assert [d.newid for d in text.load_reuters(tmp_path, split="test", num_files=2)] == [2]


def test_load_reuters_uses_env_var(tmp_path, monkeypatch):
    _write_corpus(tmp_path, [[1]])
    monkeypatch.setenv("JDLFS_DATA_DIR", str(tmp_path))
    assert [d.newid for d in text.load_reuters(num_files=1)] == [1]


def test_load_reuters_missing_and_reordered_documents(tmp_path):
    _write_corpus(tmp_path, [[1, 2], [4]])
    with pytest.raises(TextFormatError, match="NEWID 4 where 3 was expected") as info:
        text.load_reuters(tmp_path, num_files=2)
    assert info.value.path == str(tmp_path / "reuters21578" / "reut2-001.sgm") and info.value.line == 2


def test_load_reuters_full_distribution_must_be_complete(tmp_path):
    # 22 files, NEWIDs consecutive, but far fewer than 21,578 documents: a truncated corpus, not a small one.
    _write_corpus(tmp_path, [[i + 1] for i in range(22)])
    with pytest.raises(TextFormatError, match="ends at NEWID 22.*21578"):
        text.load_reuters(tmp_path)


def test_load_reuters_missing_file_names_path(tmp_path):
    _write_corpus(tmp_path, [[1]])
    with pytest.raises(CorpusNotFoundError) as info:
        text.load_reuters(tmp_path, num_files=2)
    assert info.value.filename == str(tmp_path / "reuters21578" / "reut2-001.sgm")
    assert isinstance(info.value, FileNotFoundError) and "reut2-001.sgm" in str(info.value)


def test_load_reuters_no_data_dir_explains_how_to_set_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="JDLFS_DATA_DIR") as info:
        text.load_reuters()
    assert "reuters21578/reut2-000.sgm" in str(info.value)
    with pytest.raises(CorpusNotFoundError) as info:
        text.load_reuters(tmp_path)
    assert info.value.filename == str(tmp_path / "reuters21578" / "reut2-000.sgm")
    assert str(tmp_path / "reut2-000.sgm") in str(info.value)  # every place looked at is listed
    assert str(pickle.loads(pickle.dumps(info.value))) == str(info.value)


def test_load_reuters_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="split"):
        text.load_reuters(tmp_path, split="validation")
    with pytest.raises(ValueError, match="num_files"):
        text.load_reuters(tmp_path, num_files=0)


# =========================================================================== Multi30k

DE = ["Zwei junge weiße Männer sind im Freien.", "Ein kleines Mädchen klettert.", "Ein Hund läuft. "]
EN = ["Two young, White males are outside.", "A little girl climbing.", "A dog runs. "]


def write_gz(path: Path, lines: list[str], trailer: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        f.write(("\n".join(lines) + trailer).encode("utf-8"))
    return path


def test_multi30k_all_splits_line_aligned(tmp_path):
    for i, split in enumerate(text.MULTI30K_SPLITS):
        write_gz(tmp_path / "multi30k" / f"{split}.de.gz", DE[: i % 3 + 1])
        write_gz(tmp_path / "multi30k" / f"{split}.en.gz", EN[: i % 3 + 1])
    for i, split in enumerate(text.MULTI30K_SPLITS):
        de, en = text.load_multi30k(split, tmp_path)
        assert de == [s.strip() for s in DE[: i % 3 + 1]] and en == [s.strip() for s in EN[: i % 3 + 1]]
    en, de = text.load_multi30k("test_2017_mscoco", tmp_path, source="en", target="de")
    assert en[0] == EN[0] and de[0] == DE[0]


def test_multi30k_plain_files_and_trailing_blank_lines(tmp_path, monkeypatch):
    (tmp_path / "val.de").write_text("\n".join(DE) + "\n\n", encoding="utf-8")  # old WMT16 release style
    write_gz(tmp_path / "val.en.gz", EN, trailer="\n\n")
    monkeypatch.setenv("JDLFS_DATA_DIR", str(tmp_path))
    de, en = text.load_multi30k("val")
    assert de == [s.strip() for s in DE] and en == [s.strip() for s in EN]


def test_multi30k_misaligned_counts_name_both_files(tmp_path):
    de = write_gz(tmp_path / "multi30k" / "train.de.gz", DE)
    en = write_gz(tmp_path / "multi30k" / "train.en.gz", EN[:2])
    with pytest.raises(TextFormatError) as info:
        text.load_multi30k("train", tmp_path)
    msg = str(info.value)
    assert f"{de} has 3 lines" in msg and f"{en} has 2" in msg


@pytest.mark.parametrize(
    "content, line, match",
    [
        (b"one\n\nthree\n", 2, "empty line"),
        (b"one\ntwo \xff\xfe\n", 2, "not valid utf-8"),
    ],
)
def test_multi30k_malformed_lines(tmp_path, content, line, match):
    path = tmp_path / "train.de.gz"
    path.write_bytes(gzip.compress(content))
    with pytest.raises(TextFormatError, match=match) as info:
        text.read_lines(path)
    assert (info.value.path, info.value.line) == (str(path), line)
    assert str(info.value).startswith(f"{path}, line {line}:")


def test_multi30k_truncated_gzip(tmp_path):
    path = tmp_path / "train.de.gz"
    path.write_bytes(gzip.compress(("\n".join(DE * 50)).encode())[:-12])
    with pytest.raises(TextFormatError, match="gzip") as info:
        text.read_lines(path)
    assert info.value.path == str(path)


def test_multi30k_missing_files(tmp_path):
    write_gz(tmp_path / "multi30k" / "train.de.gz", DE)
    with pytest.raises(CorpusNotFoundError) as info:
        text.load_multi30k("train", tmp_path)
    assert info.value.filename == str(tmp_path / "multi30k" / "train.en.gz")
    with pytest.raises(CorpusNotFoundError) as info:
        text.load_multi30k("val", tmp_path)
    assert info.value.filename == str(tmp_path / "multi30k" / "val.de.gz")
    with pytest.raises(ValueError, match="split"):
        text.load_multi30k("test", tmp_path)
    with pytest.raises(ValueError, match="'de' and 'en'"):
        text.load_multi30k("train", tmp_path, source="en")


# =========================================================================== AG News

AG_CSV = (
    '"3","Fears for T N pension after talks","Unions representing workers at Turner   Newall say they are '
    "'disappointed' after talks.\"\n"
    '"4","The Race is On (SPACE.com)","SPACE.com - A second\\team competing for the  #36;10 million, a '
    'contest for\\privately funded flight.\\\\New para for \\$5."\n'
    '"1","Bush  quot;wins quot; it","He said it #39;s &lt;b&gt;over&lt;/b&gt; for ""them"" &amp; us."\n'
    '"2","Multi\nline title","x"\n'
)


def test_ag_news_parsed_and_cleaned_exactly(tmp_path):
    path = tmp_path / "ag_news" / "test.csv"
    path.parent.mkdir()
    path.write_text(AG_CSV, encoding="utf-8")
    rows = text.load_ag_news("test", tmp_path)
    assert [(r.label, r.line) for r in rows] == [(2, 1), (3, 2), (0, 3), (1, 4)]
    assert rows[0].description == (
        "Unions representing workers at Turner Newall say they are 'disappointed' after talks."
    )
    assert rows[1].title == "The Race is On (SPACE.com)"
    assert rows[1].description == (
        "SPACE.com - A second team competing for the $10 million, a contest for privately "
        "funded flight. New para for $5."
    )
    assert rows[2].title == 'Bush "wins" it'
    assert rows[2].description == 'He said it\'s over for "them" & us.'
    assert rows[3].title == "Multi line title"
    raw = text.read_ag_news_csv(path, clean=False)
    assert raw[1].description.startswith("SPACE.com - A second\\team competing for the  #36;10")
    assert raw[2].description == 'He said it #39;s &lt;b&gt;over&lt;/b&gt; for "them" &amp; us.'
    assert text.AG_NEWS_CLASSES[rows[0].label] == "Business"


@pytest.mark.parametrize(
    "content, line, match",
    [
        ('"1","a","b"\n"2","only two"\n', 2, "expected 3 fields"),
        ('"1","a","b"\n"5","a","b"\n', 2, "class index '5'"),
        ('"1","a","b"\n"2","x\n\ny","z"\n"3","a"b","c"\n', 5, "bad CSV"),
        ("", None, "no rows"),
    ],
)
def test_ag_news_malformed_rows(tmp_path, content, line, match):
    path = tmp_path / "test.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TextFormatError, match=match) as info:
        text.read_ag_news_csv(path)
    assert (info.value.path, info.value.line) == (str(path), line)


def test_ag_news_missing_train_split_says_why(tmp_path):
    (tmp_path / "ag_news").mkdir()
    (tmp_path / "ag_news" / "test.csv").write_text('"1","a","b"\n')
    with pytest.raises(CorpusNotFoundError, match="only the test split") as info:
        text.load_ag_news("train", tmp_path)
    assert info.value.filename == str(tmp_path / "ag_news" / "train.csv")


# =========================================================================== sentencepiece

WORDS = (
    "the dog cat runs jumps over a small big red blue house street man woman child plays with ball in "
    "park near river quickly slowly and sees green tree"
).split()


def corpus(n=300, seed=0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, 12))).capitalize() + "." for _ in range(n)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("spm") / "run" / "spm.model"
    return SubwordTokenizer.train(corpus(), path, vocab_size=96), path


def test_subword_special_ids_fixed_and_documented(trained):
    tok, _ = trained
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (PAD_ID, BOS_ID, EOS_ID, UNK_ID) == (0, 1, 2, 3)
    assert [tok.id_to_piece(i) for i in range(4)] == list(text.SPECIAL_PIECES) == ["<pad>", "<s>", "</s>", "<unk>"]
    assert tok.vocab_size == 96


def test_subword_roundtrip_and_decode_rules(trained):
    tok, _ = trained
    texts = corpus(20, seed=1)
    ids = tok.encode(texts)
    assert tok.decode(ids) == texts
    one = tok.encode(texts[0], add_bos=True, add_eos=True)
    assert one[0] == BOS_ID and one[-1] == EOS_ID and BOS_ID not in one[1:-1] and EOS_ID not in one[1:-1]
    # stops at the first EOS, drops PAD and BOS; any integer dtype, 1-D or 2-D
    assert tok.decode(one + [5, 6, 7] + [PAD_ID] * 3) == texts[0]
    batch = pad_to([one, tok.encode(texts[1], add_eos=True)], 40)
    for dtype in (np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64):
        assert tok.decode(batch.astype(dtype)) == texts[:2]
    assert tok.decode(jax.numpy.asarray(batch)) == texts[:2]
    assert tok.decode([]) == ""
    assert tok.encode("\u20ac")[-1] == UNK_ID  # an unseen character
    with pytest.raises(TypeError, match="integer"):
        tok.decode(np.array([4.0, 5.0]))
    with pytest.raises(ValueError, match="outside 0..95"):
        tok.decode([4, 96])
    with pytest.raises(TypeError, match="token ids"):
        tok.decode(["a", "b"])


def test_subword_saved_model_reloads(trained):
    tok, path = trained
    assert path.is_file() and tok.path == path
    again = SubwordTokenizer.load(path)
    assert again.model_proto == tok.model_proto == path.read_bytes()
    texts = corpus(30, seed=2)
    assert again.encode(texts) == tok.encode(texts)
    assert pickle.loads(pickle.dumps(tok)).encode(texts) == tok.encode(texts)


def test_subword_training_is_deterministic(tmp_path, trained):
    tok, path = trained
    again = SubwordTokenizer.train(corpus(), tmp_path / "again.model", vocab_size=96)
    assert (tmp_path / "again.model").read_bytes() == path.read_bytes()
    other = SubwordTokenizer.train(corpus(seed=5), tmp_path / "other.model", vocab_size=96)
    assert other.model_proto != again.model_proto  # it does depend on the texts


def test_subword_bad_training_input(tmp_path):
    with pytest.raises(ValueError, match="Vocabulary size"):
        SubwordTokenizer.train(["a b c", "b c a"], tmp_path / "x.model", vocab_size=5000)
    with pytest.raises(TypeError, match="list of strings"):
        SubwordTokenizer.train("just one string", tmp_path / "x.model")
    with pytest.raises(ValueError, match="non-empty"):
        SubwordTokenizer.train(["", "  "], tmp_path / "x.model")
    with pytest.raises(ValueError, match="vocab_size"):
        SubwordTokenizer.train(["a b"], tmp_path / "x.model", vocab_size=4)
    assert not (tmp_path / "x.model").exists()


def test_subword_load_refuses_corrupt_or_foreign_models(tmp_path):
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(TextFormatError, match="not a sentencepiece model") as info:
        SubwordTokenizer.load(bad)
    assert info.value.path == str(bad)
    foreign = tmp_path / "foreign.model"  # sentencepiece's defaults: unk=0, bos=1, eos=2, no pad
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus(100)),
        model_prefix=str(tmp_path / "foreign"),
        vocab_size=60,
        num_threads=1,
        minloglevel=2,
    )
    with pytest.raises(TextFormatError, match="pad/bos/eos/unk ids") as info:
        SubwordTokenizer.load(foreign)
    assert info.value.path == str(foreign)
    with pytest.raises(FileNotFoundError) as info:
        SubwordTokenizer.load(tmp_path / "missing.model")
    assert info.value.filename == str(tmp_path / "missing.model")


# =========================================================================== character vocabulary


def test_char_vocab_build_encode_decode():
    vocab = CharVocab.build(["hello world", "held"])
    assert vocab.chars == (" ", "d", "e", "h", "l", "o", "r", "w") and vocab.vocab_size == 12
    ids = vocab.encode("hold", add_bos=True, add_eos=True)
    assert ids == [BOS_ID, 7, 9, 8, 5, EOS_ID]
    assert vocab.decode(ids) == "hold"
    assert vocab.encode("hex") == [7, 6, UNK_ID] and vocab.decode([7, 6, UNK_ID]) == "he\ufffd"
    assert vocab.encode(["he", "lo"]) == [[7, 6], [8, 9]]
    assert vocab.decode(np.array([[7, 6, EOS_ID, 8], [BOS_ID, 8, PAD_ID, PAD_ID]], np.uint8)) == ["he", "l"]
    stream = "hello, world\n" * 3
    np.testing.assert_array_equal(vocab.encode_array(stream), np.array(vocab.encode(stream), np.int32))
    assert vocab.encode_array(stream).dtype == np.int32
    with pytest.raises(ValueError, match="outside 0..11"):
        vocab.decode([12])


def test_char_vocab_min_count_and_max_size():
    texts = ["aaaa bbb cc d"]
    assert CharVocab.build(texts, min_count=3).chars == (" ", "a", "b")
    # counts a 4, " " 3, b 3, c 2, d 1: the two most frequent are a and " " (ties: lower code point first)
    assert CharVocab.build(texts, max_size=2).chars == (" ", "a")
    with pytest.raises(ValueError, match="min_count"):
        CharVocab.build(texts, min_count=0)
    with pytest.raises(ValueError, match="no character"):
        CharVocab.build(texts, min_count=100)


def test_char_vocab_save_load_roundtrip(tmp_path):
    vocab = CharVocab.build(["Grüße aus Köln\n\t€"])
    path = vocab.save(tmp_path / "run" / "chars.json")
    loaded = CharVocab.load(path)
    assert loaded == vocab and loaded.encode("Köln €") == vocab.encode("Köln €")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["special_ids"] == {"pad": 0, "bos": 1, "eos": 2, "unk": 3}


@pytest.mark.parametrize(
    "content, line, match",
    [
        ('{"format": "jdlfs.text.CharVocab",\n "version": 1,\n oops}', 3, "not valid JSON"),
        ('{"format": "something else"}', None, "not a character vocabulary"),
        (
            '{"format": "jdlfs.text.CharVocab", "version": 1, "special_ids": {"pad": 1, "bos": 0, "eos": 2, "unk": 3},'
            ' "chars": ["a"]}',
            None,
            "special ids",
        ),
        (
            '{"format": "jdlfs.text.CharVocab", "version": 1, "special_ids": {"pad": 0, "bos": 1, "eos": 2, "unk": 3},'
            ' "chars": ["a", "ab"]}',
            None,
            "single character",
        ),
    ],
)
def test_char_vocab_corrupt_file(tmp_path, content, line, match):
    path = tmp_path / "chars.json"
    path.write_text(content)
    with pytest.raises(TextFormatError, match=match) as info:
        CharVocab.load(path)
    assert (info.value.path, info.value.line) == (str(path), line)


# =========================================================================== batching


def test_pad_to_exact_and_dtypes():
    seqs = [[5, 6, 7], np.array([8], np.uint8), np.array([], np.int64), np.array([9, 10], np.int64)]
    out = pad_to(seqs, 4, pad_id=0)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [[5, 6, 7, 0], [8, 0, 0, 0], [0, 0, 0, 0], [9, 10, 0, 0]])
    np.testing.assert_array_equal(pad_to([[1, 2, 3]], 2, pad_id=-1, truncate=True), [[1, 2]])
    with pytest.raises(ValueError, match=r"seqs\[0\] has 3 ids, more than length=2"):
        pad_to([[1, 2, 3]], 2)
    with pytest.raises(TypeError, match="integer"):
        pad_to([[1.5, 2.0]], 3)
    for dtype in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64):
        np.testing.assert_array_equal(pad_to([np.array([1, 2], dtype)], 3), [[1, 2, 0]])


def _random_sequences(n, seed, max_len=128, low=4):
    rng = np.random.default_rng(seed)
    return [list(rng.integers(low, 50, size=rng.integers(0, max_len + 1))) for _ in range(n)]


@pytest.mark.parametrize("pad_id", [0, 99])
def test_bucket_batches_every_sequence_once_padded_in_documented_shapes(pad_id):
    seqs = _random_sequences(203, seed=0)
    buckets = (16, 32, 64, 128)
    seen = []
    shapes = set()
    for batch, idx in bucket_batches(jax.random.key(0), seqs, 8, buckets, pad_id, return_indices=True):
        assert batch.dtype == np.int32 and idx.dtype == np.int32
        shapes.add(batch.shape)
        length = batch.shape[1]
        for row, i in zip(batch, idx):
            if i < 0:  # fill row of the last partial batch
                assert np.all(row == pad_id)
                continue
            seq = seqs[i]
            assert text.bucket_of(len(seq), buckets) == length  # the smallest bucket that fits
            np.testing.assert_array_equal(row[: len(seq)], seq)
            assert np.all(row[len(seq) :] == pad_id)
            seen.append(int(i))
    assert sorted(seen) == list(range(len(seqs)))  # each exactly once
    assert shapes <= {(8, b) for b in buckets} and len(shapes) == len(buckets)


def test_bucket_batches_shuffling_is_keyed():
    seqs = _random_sequences(100, seed=1)

    def order(key):
        return [tuple(i) for _, i in bucket_batches(key, seqs, 4, return_indices=True)]

    assert order(jax.random.key(3)) == order(jax.random.key(3))
    assert order(jax.random.key(3)) != order(jax.random.key(4))
    plain = [i for batch in order(None) for i in batch if i >= 0]
    by_bucket = sorted(range(100), key=lambda i: (text.bucket_of(len(seqs[i])), i))
    assert plain == by_bucket  # no key: stored order within buckets


def test_bucket_batches_parallel_fields_share_length():
    src = _random_sequences(50, seed=2, max_len=60)
    tgt = _random_sequences(50, seed=3, max_len=60)
    seen = 0
    for (s, t), idx in bucket_batches(jax.random.key(1), (src, tgt), 5, (16, 32, 64), return_indices=True):
        assert s.shape == t.shape
        for r, i in enumerate(idx):
            if i >= 0:
                assert s.shape[1] == text.bucket_of(max(len(src[i]), len(tgt[i])), (16, 32, 64))
                np.testing.assert_array_equal(s[r, : len(src[i])], src[i])
                np.testing.assert_array_equal(t[r, : len(tgt[i])], tgt[i])
                seen += 1
    assert seen == 50
    with pytest.raises(ValueError, match="different numbers of examples"):
        next(bucket_batches(None, (src, tgt[:-1]), 5))
    with pytest.raises(TypeError, match="parallel fields"):
        next(bucket_batches(None, ([1, 2], [3, 4]), 5))


def test_bucket_batches_overflow_and_remainder():
    seqs = [[5] * 10, [6] * 40, [7] * 3]
    with pytest.raises(ValueError, match="example 1 has 40 ids, more than the largest bucket 32"):
        next(bucket_batches(None, seqs, 2, (16, 32)))
    out = list(bucket_batches(None, seqs, 2, (16, 32), overflow="truncate", return_indices=True))
    assert [(b.shape, list(i)) for b, i in out] == [((2, 16), [0, 2]), ((2, 32), [1, -1])]
    np.testing.assert_array_equal(out[1][0][0], [6] * 32)
    kept = list(bucket_batches(None, seqs, 2, (16, 64), remainder="keep"))
    assert [b.shape for b in kept] == [(2, 16), (1, 64)]
    dropped = list(bucket_batches(None, seqs, 2, (16, 64), remainder="drop"))
    assert [b.shape for b in dropped] == [(2, 16)]
    with pytest.raises(ValueError, match="bucket_lengths"):
        next(bucket_batches(None, seqs, 2, (32, 16)))
    with pytest.raises(ValueError, match="batch_size"):
        next(bucket_batches(None, seqs, 0))


def test_lm_windows_targets_shift_and_windows_continue():
    ids = np.arange(1000)
    inputs, targets = lm_windows(ids, batch_size=4, window=7)
    k = 999 // 28
    assert inputs.shape == targets.shape == (k, 4, 7) and inputs.dtype == np.int32
    b, kk, t = np.meshgrid(np.arange(4), np.arange(k), np.arange(7))
    np.testing.assert_array_equal(inputs[kk, b, t], b * k * 7 + kk * 7 + t)
    np.testing.assert_array_equal(targets, inputs + 1)
    np.testing.assert_array_equal(inputs[1:, :, 0], inputs[:-1, :, -1] + 1)  # window k+1 continues window k

    rng = np.random.default_rng(0)
    stream = rng.integers(0, 90, size=5000).astype(np.uint8)
    inputs, targets = lm_windows(stream, 8, 32)
    k = inputs.shape[0]
    for row in range(8):
        flat_in = inputs[:, row, :].reshape(-1)  # the stream, window after window
        flat_tg = targets[:, row, :].reshape(-1)
        start = row * k * 32
        np.testing.assert_array_equal(flat_in, stream[start : start + k * 32])
        np.testing.assert_array_equal(flat_tg, stream[start + 1 : start + k * 32 + 1])


def test_lm_windows_refuses_bad_input():
    with pytest.raises(ValueError, match="at least batch_size \\* window \\+ 1 = 17"):
        lm_windows(np.arange(16), 4, 4)
    with pytest.raises(TypeError, match="integer"):
        lm_windows(np.linspace(0, 1, 100), 2, 4)
    with pytest.raises(ValueError, match="window"):
        lm_windows(np.arange(100), 2, 0)


# =========================================================================== the real corpora


def _real_dir(sub: str) -> Path:
    if REAL_DATA_DIR is None or not (Path(REAL_DATA_DIR) / sub).is_dir():
        pytest.skip(f"real corpus {sub}/ not found ($JDLFS_DATA_DIR or ../shared/data)")
    return Path(REAL_DATA_DIR)


def test_real_reuters_counts():
    root = _real_dir("reuters21578")
    docs = text.load_reuters(root)
    assert len(docs) == text.REUTERS_DOCUMENTS == 21578
    counts = {s: sum(d.split == s for d in docs) for s in text.LEWIS_SPLITS}
    assert counts == {"train": 14668, "test": 6188, "not-used": 722}  # LEWISSPLIT, as in the distribution
    modapte = {s: sum(d.modapte_split == s for d in docs) for s in ("train", "test")}
    assert modapte == {"train": 9603, "test": 3299}  # the standard ModApte sizes
    assert sum(d.has_title_and_body for d in docs) == 19043  # the data README's count
    assert not any(d.body.lower().endswith(("reuter", "reuter...")) for d in docs)
    controls = re.compile(r"[\x00-\x1f\x7f-\x9f]")
    assert not any(controls.search(d.title + d.body) for d in docs)


def test_real_multi30k_and_ag_news_counts():
    root = _real_dir("multi30k")
    for split in text.MULTI30K_SPLITS:
        de, en = text.load_multi30k(split, root)
        assert len(de) == len(en) == text.MULTI30K_LINES[split]
    assert text.MULTI30K_LINES["train"] == 29000 and text.MULTI30K_LINES["val"] == 1014
    assert text.MULTI30K_LINES["test_2016_flickr"] == 1000
    if (root / "ag_news").is_dir():
        rows = text.load_ag_news("test", root)
        assert len(rows) == 7600 and np.bincount([r.label for r in rows]).tolist() == [1900] * 4

"""Reuters-21578 (Distribution 1.0) SGML reader.

The corpus is 22 files ``reut2-000.sgm`` ... ``reut2-021.sgm`` (1,000
documents each, the last 578; NEWIDs 1 .. 21,578 in order), Latin-1 encoded.
Each document looks like::

    <REUTERS TOPICS="YES" LEWISSPLIT="TRAIN" CGISPLIT="TRAINING-SET" OLDID="5544" NEWID="1">
    <DATE>26-FEB-1987 15:01:01.79</DATE>
    <TOPICS><D>cocoa</D></TOPICS> ... <UNKNOWN> ... </UNKNOWN>
    <TEXT>&#2;
    <TITLE>BAHIA COCOA REVIEW</TITLE>
    <DATELINE>    SALVADOR, Feb 26 - </DATELINE><BODY>Showers continued throughout the week in
    the Bahia cocoa zone, ...
     Reuter
    &#3;</BODY></TEXT>
    </REUTERS>

What :func:`read_reuters_file` does to the text of ``<TITLE>``, ``<BODY>`` and
``<DATELINE>``:

* SGML character references are unescaped (``&lt;`` -> ``<``, ``&amp;`` ->
  ``&``, ``&#NN;``) with :func:`html.unescape`;
* control characters are removed: the wire codes ``&#2;``/``&#3;`` (start and
  end of text), ``&#5;``, ``&#22;``, ``&#127;`` (DEL, strewn through a few
  garbled stories) and every other C0/C1 control character except tab,
  newline and carriage return, written as references or as raw bytes; the two
  terminal escape sequences ``ESC [ B`` go with their ``ESC``;
* the body's trailing wire signature is removed, repeatedly (a few stories
  are signed twice): a last line holding only ``Reuter``, ``Reuters`` or
  the cut-off ``REUTE`` in any case, optionally followed by ``...``, ``^M``
  or a time code (``REUTER...^M``, ``REUTER11:43/VB``, ``Reuter4``),
  or ``Reuter`` / ``REUTER`` / ``reuter`` ending the last line after the
  story's last words (``... the future. REUTER``); a last line
  ``Reuters.`` (a wrapped ``... told\nReuters.``) is kept;
* whitespace: titles and datelines are collapsed to single spaces (a dateline
  also loses its trailing `` -``). Bodies follow ``whitespace``:
  ``"collapse"`` (default: one line, single spaces), ``"paragraphs"`` (one
  line per paragraph: the wire text wraps lines at ~65 columns and starts a
  paragraph, or a table row, with an indented line; blank lines also separate
  paragraphs) or ``"keep"`` (the original line breaks and spaces, only
  stripped at both ends).

Documents without a title or body are kept, with empty strings, so per-split
counts are those of the distribution: ``TYPE="BRIEF"`` documents (1,798; a
one-line flash) have a title and no body, ``TYPE="UNPROC"`` documents (737;
unformatted text such as tables) have neither; 19,043 documents have both
(:attr:`ReutersDocument.has_title_and_body`). For headline generation::

    docs = load_reuters(split="train")
    pairs = [(d.body, d.title) for d in docs if d.has_title_and_body]

``split`` is the LEWISSPLIT attribute lower-cased: ``"train"`` (14,668
documents), ``"test"`` (6,188) or ``"not-used"`` (722).
:attr:`ReutersDocument.modapte_split` gives the ModApte split instead
(LEWISSPLIT train/test restricted to ``TOPICS="YES"``: 9,603 / 3,299).

Malformed input is a :class:`~jdlfs.text.TextFormatError` naming the file and
line, never a silently shorter corpus: an unterminated, unopened, duplicated
or nested ``<REUTERS>``, ``<TEXT>``, ``<TITLE>``, ``<BODY>``, ``<DATELINE>``
or ``<TOPICS>`` element; text outside any document; a document without
``NEWID``, ``LEWISSPLIT`` or ``<TEXT>``; a file without documents;
:func:`load_reuters` also requires the NEWIDs to run 1, 2, 3, ... through the
files and, for the full distribution, to reach 21,578.
"""

from __future__ import annotations

import bisect
import html
import os
import re
from dataclasses import dataclass
from pathlib import Path

from jdlfs.text.errors import TextFormatError
from jdlfs.text.files import find_corpus_dir, read_text, require_file

__all__ = [
    "LEWIS_SPLITS",
    "REUTERS_DOCUMENTS",
    "REUTERS_FILES",
    "WHITESPACE_MODES",
    "ReutersDocument",
    "clean_reuters_text",
    "load_reuters",
    "read_reuters_file",
]

#: The files of the distribution, in order.
REUTERS_FILES = tuple(f"reut2-{i:03d}.sgm" for i in range(22))
#: Documents in the full distribution (NEWIDs 1 .. 21,578).
REUTERS_DOCUMENTS = 21578
#: Values of :attr:`ReutersDocument.split` (LEWISSPLIT, lower-cased).
LEWIS_SPLITS = ("train", "test", "not-used")
#: Accepted ``whitespace`` arguments (see the module docstring).
WHITESPACE_MODES = ("collapse", "paragraphs", "keep")

SUBDIRS = ("reuters21578", "reuters-21578", "reuters")


@dataclass(frozen=True)
class ReutersDocument:
    """One ``<REUTERS>`` document.

    Attributes:
      newid: the NEWID attribute (1 .. 21,578 in the distribution).
      split: LEWISSPLIT lower-cased: ``"train"``, ``"test"`` or ``"not-used"``.
      title: the cleaned headline; ``""`` when the document has no ``<TITLE>``.
      body: the cleaned story without its wire signature; ``""`` when the
        document has no ``<BODY>`` (or the body held only the signature).
      dateline: e.g. ``"SALVADOR, Feb 26"``; ``""`` when absent.
      topics: the ``<D>`` entries of ``<TOPICS>``, e.g. ``("cocoa",)``.
      topics_attr: the TOPICS attribute: ``"YES"``, ``"NO"`` or ``"BYPASS"``.
      text_type: the ``<TEXT>`` TYPE attribute: ``"NORM"`` (the default),
        ``"BRIEF"`` or ``"UNPROC"``.
      path, line: where the ``<REUTERS>`` tag is (1-based line).
    """

    newid: int
    split: str
    title: str
    body: str
    dateline: str
    topics: tuple[str, ...]
    topics_attr: str
    text_type: str
    path: str
    line: int

    @property
    def has_title_and_body(self) -> bool:
        """Both a non-empty title and a non-empty body (19,043 documents of 21,578)."""
        return bool(self.title) and bool(self.body)

    @property
    def modapte_split(self) -> str:
        """``"train"`` / ``"test"`` for LEWISSPLIT train/test with ``TOPICS="YES"``, else ``"unused"``."""
        if self.topics_attr == "YES" and self.split in ("train", "test"):
            return self.split
        return "unused"


# --------------------------------------------------------------------------- text cleaning

_ANSI = re.compile(r"(?:&#27;|\x1b)\[[0-9;]*[A-Za-z]")
# C0 and C1 control characters except \t \n \r.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# The wire signature: a last line holding only "Reuter" / "Reuters" / the cut-off "REUTE" (any case), possibly
# followed by "...", "^M" or a digit (a time code); or "Reuter" / "REUTER" / "reuter" with the same suffixes ending
# the last line after the story's words. A last line "Reuters." ends a wrapped sentence ("... told\nReuters.").
_SIGN_SUFFIX = r"(?:\.\.\.)?(?:\^M)?(?:\d[\d:/A-Z]*)?"
_SIGNATURE = re.compile(rf"(?:(?:\A|\n)[ \t]*(?i:reute(?:rs?)?)|[ \t]+(?:REUTER|Reuter|reuter)){_SIGN_SUFFIX}[ \t]*\Z")
_PARAGRAPH_BREAK = re.compile(r"\n(?:[ \t]*\n)*(?=[ \t])|\n(?:[ \t]*\n)+")


def clean_reuters_text(raw: str) -> str:
    """Unescape SGML references and remove control characters (whitespace untouched)."""
    text = _ANSI.sub("", raw)
    text = html.unescape(text)
    return _CONTROL.sub("", text)


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _normalise_body(text: str, whitespace: str) -> str:
    text = text.rstrip()
    while m := _SIGNATURE.search(text, max(0, len(text) - 64)):  # some stories are signed twice
        text = text[: m.start()].rstrip()
    if whitespace == "collapse":
        return _collapse(text)
    if whitespace == "paragraphs":
        paragraphs = (_collapse(p) for p in _PARAGRAPH_BREAK.split(text.replace("\r", "")))
        return "\n".join(p for p in paragraphs if p)
    return text.strip()


# --------------------------------------------------------------------------- SGML structure

_REUTERS_TAG = re.compile(r"<(/?)REUTERS\b")
_ATTRIBUTE = re.compile(r'([A-Za-z]+)\s*=\s*"([^"]*)"')
_OUTSIDE_OK = re.compile(r"\s*(?:<!DOCTYPE[^<>]*>\s*)?")
_D_ENTRY = re.compile(r"<D>(.*?)</D>", re.DOTALL)
_ELEMENTS = ("TEXT", "TITLE", "DATELINE", "BODY", "TOPICS")
# Per element: its opening tag, its closing tag, an opening tag without its '>'.
_ELEMENT_PATTERNS = {
    name: (re.compile(rf"<{name}\b([^<>]*)>"), re.compile(rf"</{name}\s*>"), re.compile(rf"<{name}\b(?![^<>]*>)"))
    for name in _ELEMENTS
}


class _Lines:
    """Offset -> 1-based line number."""

    def __init__(self, text: str) -> None:
        self._newlines = [m.start() for m in re.finditer("\n", text)]

    def __call__(self, offset: int) -> int:
        return bisect.bisect_left(self._newlines, offset) + 1


def _element(path, lines, doc: str, base: int, name: str) -> tuple[str | None, str]:
    """Content and attribute text of the single element ``name`` in ``doc`` (``None`` if absent)."""
    open_re, close_re, unclosed_re = _ELEMENT_PATTERNS[name]
    opens = list(open_re.finditer(doc))
    closes = list(close_re.finditer(doc))
    unclosed = list(unclosed_re.finditer(doc))
    if unclosed:
        raise TextFormatError(path, f"unterminated <{name} tag (no closing '>')", lines(base + unclosed[0].start()))
    if len(opens) > 1:
        raise TextFormatError(
            path,
            f"second <{name}> in one document (the first is at line {lines(base + opens[0].start())})",
            lines(base + opens[1].start()),
        )
    if len(closes) > 1:
        raise TextFormatError(path, f"second </{name}> in one document", lines(base + closes[1].start()))
    if opens and not closes:
        raise TextFormatError(
            path, f"unterminated <{name}>: no </{name}> before the document ends", lines(base + opens[0].start())
        )
    if closes and (not opens or closes[0].start() < opens[0].end()):
        raise TextFormatError(path, f"</{name}> without a preceding <{name}>", lines(base + closes[0].start()))
    if not opens:
        return None, ""
    return doc[opens[0].end() : closes[0].start()], opens[0].group(1)


def _document(
    path, lines, text: str, start: int, attrs: str, body_start: int, end: int, whitespace: str
) -> ReutersDocument:
    line = lines(start)
    attributes = dict(_ATTRIBUTE.findall(attrs))
    for required in ("NEWID", "LEWISSPLIT"):
        if required not in attributes:
            raise TextFormatError(path, f"<REUTERS> without a {required} attribute", line)
    try:
        newid = int(attributes["NEWID"])
    except ValueError:
        raise TextFormatError(path, f"NEWID={attributes['NEWID']!r} is not an integer", line) from None
    doc = text[body_start:end]
    parts = {name: _element(path, lines, doc, body_start, name) for name in _ELEMENTS}
    text_content, text_attrs = parts["TEXT"]
    if text_content is None:
        raise TextFormatError(path, f"document NEWID={newid} has no <TEXT> element", line)
    text_type = dict(_ATTRIBUTE.findall(text_attrs)).get("TYPE", "NORM")
    title, _ = parts["TITLE"]
    dateline, _ = parts["DATELINE"]
    body, _ = parts["BODY"]
    topics, _ = parts["TOPICS"]
    return ReutersDocument(
        newid=newid,
        split=attributes["LEWISSPLIT"].lower(),
        title=_collapse(clean_reuters_text(title or "")),
        body=_normalise_body(clean_reuters_text(body or ""), whitespace),
        dateline=_collapse(clean_reuters_text(dateline or "")).rstrip(" -"),
        topics=tuple(_collapse(clean_reuters_text(d)) for d in _D_ENTRY.findall(topics or "")),
        topics_attr=attributes.get("TOPICS", "YES"),
        text_type=text_type,
        path=os.fspath(path),
        line=line,
    )


def _check_whitespace(whitespace: str) -> None:
    if whitespace not in WHITESPACE_MODES:
        raise ValueError(f"whitespace must be one of {WHITESPACE_MODES}, got {whitespace!r}")


def read_reuters_file(path: str | os.PathLike[str], *, whitespace: str = "collapse") -> list[ReutersDocument]:
    """Parse one ``reut2-NNN.sgm`` file (Latin-1) into its documents, in file order.

    Args:
      path: the SGML file.
      whitespace: body whitespace handling, one of :data:`WHITESPACE_MODES`
        (see the module docstring).

    Returns:
      The documents, cleaned as the module docstring describes.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      TextFormatError: malformed SGML (names the file and line).
      ValueError: a bad ``whitespace``.
    """
    _check_whitespace(whitespace)
    path = Path(path)
    text = read_text(path, "latin-1")
    lines = _Lines(text)
    docs: list[ReutersDocument] = []
    open_at: tuple[int, str, int] | None = None  # (tag start, attribute text, content start)
    outside_from = 0
    for m in _REUTERS_TAG.finditer(text):
        end = text.find(">", m.end())
        if end < 0 or "<" in text[m.end() : end]:
            raise TextFormatError(path, f"unterminated <{m.group(1)}REUTERS tag (no closing '>')", lines(m.start()))
        if m.group(1):  # </REUTERS>
            if open_at is None:
                raise TextFormatError(path, "</REUTERS> without a preceding <REUTERS>", lines(m.start()))
            docs.append(_document(path, lines, text, open_at[0], open_at[1], open_at[2], m.start(), whitespace))
            open_at, outside_from = None, end + 1
        else:
            if open_at is not None:
                raise TextFormatError(
                    path,
                    f"<REUTERS> opened while the document of line {lines(open_at[0])} "
                    "is not closed (missing </REUTERS>)",
                    lines(m.start()),
                )
            gap = _OUTSIDE_OK.match(text, outside_from, m.start())
            if gap.end() != m.start():
                raise TextFormatError(path, "text outside any <REUTERS> document", lines(gap.end()))
            open_at = (m.start(), text[m.end() : end], end + 1)
    if open_at is not None:
        raise TextFormatError(path, "unterminated <REUTERS>: the file ends before </REUTERS>", lines(open_at[0]))
    gap = _OUTSIDE_OK.match(text, outside_from)
    if gap.end() != len(text):
        raise TextFormatError(path, "text outside any <REUTERS> document", lines(gap.end()))
    if not docs:
        raise TextFormatError(path, "no <REUTERS> documents in the file")
    return docs


def load_reuters(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    split: str | None = None,
    whitespace: str = "collapse",
    num_files: int = len(REUTERS_FILES),
) -> list[ReutersDocument]:
    """Read the Reuters-21578 corpus.

    Args:
      data_dir: the data directory (``None``: ``$JDLFS_DATA_DIR``); the files
        are looked for in ``<dir>/reuters21578``, ``<dir>/reuters-21578``,
        ``<dir>/reuters`` and ``<dir>``.
      split: keep only this LEWISSPLIT (``"train"``, ``"test"``,
        ``"not-used"``); ``None`` keeps all documents.
      whitespace: body whitespace handling (see the module docstring).
      num_files: read ``reut2-000.sgm`` .. ``reut2-{num_files-1:03d}.sgm``;
        the default 22 is the whole distribution, and then the document count
        must be exactly 21,578.

    Returns:
      The documents in NEWID order.

    Raises:
      CorpusNotFoundError: (a ``FileNotFoundError``) a file is missing.
      TextFormatError: a malformed file, NEWIDs that do not run 1, 2, 3, ...
        (missing or reordered documents), or a short full corpus.
      ValueError: a bad ``split``, ``whitespace`` or ``num_files``.
    """
    if split is not None and split not in LEWIS_SPLITS:
        raise ValueError(f"split must be one of {LEWIS_SPLITS} or None, got {split!r}")
    _check_whitespace(whitespace)
    if not isinstance(num_files, int) or not 1 <= num_files <= len(REUTERS_FILES):
        raise ValueError(f"num_files must be an int in 1..{len(REUTERS_FILES)}, got {num_files!r}")
    directory = find_corpus_dir("reuters21578", SUBDIRS, (REUTERS_FILES[0],), data_dir)
    paths = [
        require_file(
            "reuters21578",
            directory,
            (name,),
            f"The distribution has {len(REUTERS_FILES)} files reut2-000.sgm .. reut2-021.sgm.",
        )
        for name in REUTERS_FILES[:num_files]
    ]
    docs: list[ReutersDocument] = []
    for path in paths:
        for doc in read_reuters_file(path, whitespace=whitespace):
            expected = len(docs) + 1
            if doc.newid != expected:
                raise TextFormatError(
                    path,
                    f"NEWID {doc.newid} where {expected} was expected: documents are "
                    "missing, duplicated or out of order",
                    doc.line,
                )
            docs.append(doc)
    if num_files == len(REUTERS_FILES) and len(docs) != REUTERS_DOCUMENTS:
        raise TextFormatError(
            paths[-1],
            f"the corpus ends at NEWID {len(docs)}; the distribution has "
            f"{REUTERS_DOCUMENTS} documents (is the file truncated?)",
        )
    return docs if split is None else [d for d in docs if d.split == split]

"""Turn knowledge entries and user documents into self-describing chunks with deterministic ids.

Why chunks follow sections: a section ("Diagnostic criteria", "Common confusions", a PDF page) is the unit a
caption cites, and prefixing each chunk with "<entry name> — <section>" keeps it meaningful on its own.
Each knowledge entry also gets a short "Summary" chunk (name, aliases, causes, codes, first sentence of the
definition) so abbreviation and code queries ("RBBB", "CRBBB") land on the right entry; its metadata carries the
entry's terms (``terms``: JSON ``{"names": [...], "causes": [...]}``) so a store knows its own vocabulary for the
term-matching half of the ranking (retrieval.ranking) without re-reading the corpus it was built from.

A knowledge file that does not parse is skipped and named (:func:`load_knowledge`), never fatal: one broken
front matter block must not keep the other entries out of the store.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_text_splitters import MarkdownHeaderTextSplitter, RecursiveCharacterTextSplitter

from corpora.knowledge import KnowledgeEntry, KnowledgeError, entries_dir, parse_entry

# all-MiniLM-L6-v2 reads at most 256 word pieces (~1,000 characters of English); longer sections are split.
MAX_CHUNK_CHARS = 900
CHUNK_OVERLAP_CHARS = 150
SUPPORTED_SUFFIXES = (".md", ".markdown", ".txt", ".pdf")
DOCUMENT_CATEGORY = "document"
SUMMARY_SECTION = "summary"


class DocumentError(ValueError):
    """A user document cannot be ingested; the message names the file and the reason."""


@dataclass(frozen=True)
class Chunk:
    id: str
    text: str
    metadata: dict[str, Any]


def _splitter() -> RecursiveCharacterTextSplitter:
    return RecursiveCharacterTextSplitter(chunk_size=MAX_CHUNK_CHARS, chunk_overlap=CHUNK_OVERLAP_CHARS)


def encode_codes(codes: Sequence[str]) -> str:
    """Codes as one Chroma-safe string, e.g. ``|CRBBB|713427006|`` ('' when there are none)."""
    return f"|{'|'.join(codes)}|" if codes else ""


def decode_codes(value: str | None) -> tuple[str, ...]:
    return tuple(c for c in (value or "").split("|") if c)


def chunk_id(source: str, section: str, text: str, metadata: dict[str, Any]) -> str:
    """Content hash of source + section + chunk text (+ metadata, so a changed code list re-indexes)."""
    payload = json.dumps([source, section, text, metadata], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def _make_chunks(pieces: Iterable[tuple[str, str, int | None]], base: dict[str, Any], title: str) -> list[Chunk]:
    """(section, text, page) pieces -> prefixed, split, hashed chunks; duplicates collapse to one id."""
    chunks: dict[str, Chunk] = {}
    splitter = _splitter()
    for section, text, page in pieces:
        text = text.strip()
        if not text:
            continue
        prefix = f"{title} — {section}:\n" if section else f"{title}:\n"
        parts = [text] if len(text) <= MAX_CHUNK_CHARS else splitter.split_text(text)
        for part in parts:
            metadata = dict(base, section=section)
            if page is not None:
                metadata["page"] = page
            body = prefix + part.strip()
            cid = chunk_id(base["source"], section, body, metadata)
            chunks.setdefault(cid, Chunk(cid, body, metadata))
    return list(chunks.values())


def _summary_text(entry: KnowledgeEntry) -> str:
    definition = " ".join(entry.sections.get("definition", "").split())
    first_sentence = definition.split(". ")[0].rstrip(".") + "." if definition else ""
    lines = [f"{entry.name}."]
    if entry.aliases:
        lines.append(f"Also called: {', '.join(entry.aliases)}.")
    if entry.causes:
        lines.append(f"Caused by: {', '.join(entry.causes)}.")
    lines.append(f"Category: {entry.category}.")
    if entry.scp_codes:
        lines.append(f"SCP-ECG codes: {', '.join(entry.scp_codes)}.")
    if entry.snomed_codes:
        lines.append(f"SNOMED CT codes: {', '.join(entry.snomed_codes)}.")
    if first_sentence:
        lines.append(first_sentence)
    return "\n".join(lines)


def entry_terms_json(entry: KnowledgeEntry) -> str:
    """The entry's searchable terms for the summary chunk's ``terms`` metadata (names: name, aliases, SCP codes)."""
    names = list(dict.fromkeys([entry.name, *entry.aliases, *entry.scp_codes]))
    return json.dumps({"names": names, "causes": list(entry.causes)}, ensure_ascii=False)


def entry_chunks(entry: KnowledgeEntry) -> list[Chunk]:
    """One chunk per section of the entry (split if long) plus one summary chunk (which carries the terms)."""
    base: dict[str, Any] = {
        "entry": entry.id, "name": entry.name, "category": entry.category,
        "codes": encode_codes(entry.codes), "source": f"knowledge:{entry.source or entry.id + '.md'}",
    }
    if entry.codes:
        base["code_list"] = list(entry.codes)
    summary = _make_chunks([(SUMMARY_SECTION.capitalize(), _summary_text(entry), None)],
                           dict(base, terms=entry_terms_json(entry)), entry.name)
    pieces = [(name.capitalize(), text, None) for name, text in entry.sections.items()]
    return summary + _make_chunks(pieces, base, entry.name)


def knowledge_chunks(entries: Iterable[KnowledgeEntry]) -> list[Chunk]:
    return [chunk for entry in entries for chunk in entry_chunks(entry)]


def load_knowledge(directory: str | os.PathLike[str] | None = None) -> tuple[list[KnowledgeEntry], list[str]]:
    """Every entry file of a corpus folder that parses, plus one message per file that does not (named).

    Unlike ``corpora.knowledge.load_entries`` (which stops at the first bad file), a malformed file or a duplicate
    id is reported and skipped, so the rest of the corpus still reaches the store. Read fresh (no cache), so a
    long-lived process sees edited entries.
    """
    folder = Path(directory) if directory else entries_dir()
    entries: dict[str, KnowledgeEntry] = {}
    errors: list[str] = []
    for path in sorted(folder.glob("*.md")):
        try:
            entry = parse_entry(path.read_text(encoding="utf-8"), path.name)
        except (KnowledgeError, OSError, UnicodeDecodeError) as err:
            errors.append(f"{path}: {err}" if path.name not in str(err) else f"{path.parent}/{err}")
            continue
        if entry.id in entries:
            errors.append(f"{path}: duplicate id {entry.id!r} (also in {entries[entry.id].source}); skipped")
            continue
        entries[entry.id] = entry
    return sorted(entries.values(), key=lambda e: e.id), errors


def expand_documents(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Resolve document paths; a directory contributes its supported files (recursively, sorted)."""
    files: dict[Path, None] = {}
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            for found in sorted(path.rglob("*")):
                if found.is_file() and found.suffix.lower() in SUPPORTED_SUFFIXES:
                    files[found.resolve()] = None
        elif path.is_file():
            if path.suffix.lower() not in SUPPORTED_SUFFIXES:
                raise DocumentError(f"{path}: unsupported document type {path.suffix!r} "
                                    f"(supported: {', '.join(SUPPORTED_SUFFIXES)})")
            files[path.resolve()] = None
        else:
            raise DocumentError(f"{path}: document not found")
    return list(files)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DocumentError(f"{path}: not UTF-8 text ({err})") from err
    except OSError as err:
        raise DocumentError(f"{path}: cannot read ({err})") from err


def _markdown_pieces(text: str) -> list[tuple[str, str, int | None]]:
    splitter = MarkdownHeaderTextSplitter(
        headers_to_split_on=[("#", "h1"), ("##", "h2"), ("###", "h3")], strip_headers=True,
    )
    pieces = []
    for doc in splitter.split_text(text):
        section = " > ".join(doc.metadata[h] for h in ("h1", "h2", "h3") if doc.metadata.get(h))
        pieces.append((section, doc.page_content, None))
    return pieces


def _pdf_pieces(path: Path) -> list[tuple[str, str, int | None]]:
    from pypdf import PdfReader

    try:
        reader = PdfReader(str(path))
        pages = [page.extract_text() or "" for page in reader.pages]
    except Exception as err:  # pypdf raises many types on corrupt files; all mean "cannot parse this PDF"
        raise DocumentError(f"{path}: cannot parse PDF ({type(err).__name__}: {err})") from err
    return [(f"page {number}", text, number) for number, text in enumerate(pages, start=1)]


def document_chunks(path: str | os.PathLike[str]) -> list[Chunk]:
    """Chunks of one user document (Markdown by heading, plain text by size, PDF by page)."""
    path = Path(path).resolve()
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        pieces = _pdf_pieces(path)
    elif suffix in (".md", ".markdown"):
        pieces = _markdown_pieces(_read_text(path))
    elif suffix == ".txt":
        pieces = [("", _read_text(path), None)]
    else:
        raise DocumentError(f"{path}: unsupported document type {suffix!r}")
    base = {"entry": "", "name": path.name, "category": DOCUMENT_CATEGORY, "codes": "", "source": str(path)}
    chunks = _make_chunks(pieces, base, path.stem)
    if not chunks:
        hint = " (a scanned PDF needs OCR first)" if suffix == ".pdf" else ""
        raise DocumentError(f"{path}: no extractable text{hint}")
    return chunks

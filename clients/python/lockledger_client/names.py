"""Lock names: fields as stored and as written in URLs, and lock-file names read back
into ``(namespace, owner, field)`` by the service's file patterns.

The chat app's conversation locks are ``{owner}_{field}.lock`` (the main lock
``{owner}_.lock``) and its document locks ``{owner}-{field}.lock``, both in
``<storage>/locks/``. Owner ids may contain ``_``, so a name is read with the longest
configured field that fits (``conv_1_message_operations.lock`` is conversation
``conv_1``'s ``message_operations``, never ``conv_1_message``'s ``operations``); a name
no configured field fits is read as an unconfigured key: the text after the pattern's
last separator, when it is a plain word (``conv_1_summaries.lock`` is ``conv_1``'s key
``summaries``). The service refuses to register unconfigured keys (they show as
external holders), so :class:`~lockledger_client.FileLock` registers configured ones
only.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import NamedTuple, Optional, Sequence, Tuple

__all__ = [
    "MAIN",
    "MAIN_ALIAS",
    "Namespace",
    "LockName",
    "CONVERSATION_FIELDS",
    "DOCUMENT_FIELDS",
    "DEFAULT_NAMESPACES",
    "parse_lock_name",
    "norm_field",
    "path_field",
]

#: The main lock's field as stored (written ``main`` in URL paths).
MAIN = ""
#: How the main lock's field is written in URL paths.
MAIN_ALIAS = "main"

#: The chat app's conversation lock keys (seven since ``artefacts``; ``""`` is the main lock).
CONVERSATION_FIELDS: Tuple[str, ...] = (
    "", "all", "message_operations", "memory", "messages", "uploaded_documents_list",
    "artefacts",
)
#: The chat app's document lock keys.
DOCUMENT_FIELDS: Tuple[str, ...] = (
    "", "all", "indices", "raw_data", "review_data", "static_data",
)


class Namespace(NamedTuple):
    """One family of lock files, as configured in the service (``lockledger.toml``)."""

    name: str
    #: File-name pattern with ``{owner}`` and ``{field}`` once each, e.g. ``{owner}_{field}.lock``.
    pattern: str
    fields: Tuple[str, ...]


#: The service's default namespaces (first match wins, as in the service).
DEFAULT_NAMESPACES: Tuple[Namespace, ...] = (
    Namespace("conversation", "{owner}_{field}.lock", CONVERSATION_FIELDS),
    Namespace("document", "{owner}-{field}.lock", DOCUMENT_FIELDS),
)


class LockName(NamedTuple):
    """A lock-file name read back: its namespace, owner and field (``""`` for the main
    lock). ``configured`` is False for a key the namespace does not list (the service
    reports such a lock but cannot register it)."""

    namespace: str
    owner: str
    field: str
    configured: bool


# The service's owner rule: 1..=200 bytes of [A-Za-z0-9@+_.-], not starting with . or -.
_OWNER = re.compile(r"[A-Za-z0-9@+_][A-Za-z0-9@+_.\-]{0,199}\Z")
# A plain word, as the service's unconfigured keys: [a-z0-9_]{1,64}.
_WORD = re.compile(r"[a-z0-9_]{1,64}\Z")


def _valid_owner(owner: str) -> bool:
    return _OWNER.match(owner) is not None


def parse_lock_name(file_name: str,
                    namespaces: Sequence[Namespace] = DEFAULT_NAMESPACES) -> Optional[LockName]:
    """Reads a lock file's bare name into ``(namespace, owner, field, configured)``.

    First every namespace in order with its configured fields, longest first (so
    ``c_1_message_operations.lock`` is ``("conversation", "c_1", "message_operations",
    True)``); then, if none fits, the unconfigured reading: the text after the pattern's
    last separator, when it is a plain word (``c_1_summaries.lock`` is
    ``("conversation", "c_1", "summaries", False)``). None when the name fits no
    pattern (``index.lock``, a bad owner id, a key that is not a plain word).
    """
    for ns in namespaces:
        for field in sorted(ns.fields, key=len, reverse=True):
            prefix, _, suffix = ns.pattern.replace("{field}", field).partition("{owner}")
            if (len(file_name) > len(prefix) + len(suffix) and file_name.startswith(prefix)
                    and file_name.endswith(suffix)):
                owner = file_name[len(prefix):len(file_name) - len(suffix)]
                if _valid_owner(owner):
                    return LockName(ns.name, owner, field, True)
    for ns in namespaces:
        # "{owner}SEP{field}SUFFIX": split at the last SEP.
        head, _, rest = ns.pattern.partition("{owner}")
        sep, _, suffix = rest.partition("{field}")
        if not sep or "{" in sep or not file_name.startswith(head) \
                or not file_name.endswith(suffix) or len(file_name) <= len(head) + len(suffix):
            continue
        middle = file_name[len(head):len(file_name) - len(suffix)]
        owner, found, key = middle.rpartition(sep)
        if found and _WORD.match(key) and key not in ns.fields and _valid_owner(owner):
            return LockName(ns.name, owner, key, False)
    return None


def norm_field(field: Optional[str]) -> str:
    """``None`` and ``"main"`` mean the main lock ``""``."""
    if field is None or field == MAIN_ALIAS:
        return MAIN
    return field


def path_field(field: str) -> str:
    """The field as written in URL paths (``main`` for the main lock)."""
    return MAIN_ALIAS if field == MAIN else field


def quote(segment: str) -> str:
    """One URL path segment, fully percent-encoded."""
    return urllib.parse.quote(segment, safe="")

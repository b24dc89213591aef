"""Lock-file names read back into (namespace, owner, field), and the operation name
taken from the caller. No service needed."""

from __future__ import annotations

import sys
from typing import Optional, Tuple

import pytest

from lockledger_client import LockName, Namespace, caller_operation, parse_lock_name

C, D = "conversation", "document"


@pytest.mark.parametrize("name, expected", [
    # the seven conversation keys
    ("conv42_.lock", (C, "conv42", "", True)),
    ("conv42_all.lock", (C, "conv42", "all", True)),
    ("conv42_message_operations.lock", (C, "conv42", "message_operations", True)),
    ("conv42_memory.lock", (C, "conv42", "memory", True)),
    ("conv42_messages.lock", (C, "conv42", "messages", True)),
    ("conv42_uploaded_documents_list.lock", (C, "conv42", "uploaded_documents_list", True)),
    ("conv42_artefacts.lock", (C, "conv42", "artefacts", True)),
    # owners with "_": the longest configured field that fits wins
    ("user_7_conv_3_artefacts.lock", (C, "user_7_conv_3", "artefacts", True)),
    ("a_b_message_operations.lock", (C, "a_b", "message_operations", True)),
    ("a_b_messages.lock", (C, "a_b", "messages", True)),
    ("a_b_.lock", (C, "a_b", "", True)),
    ("a_all_all.lock", (C, "a_all", "all", True)),
    # the chat app's real ids: hex and e-mail-ish
    ("5f1c0e2a9b_memory.lock", (C, "5f1c0e2a9b", "memory", True)),
    ("someone@example.com_messages.lock", (C, "someone@example.com", "messages", True)),
    # documents
    ("doc9-indices.lock", (D, "doc9", "indices", True)),
    ("doc9-.lock", (D, "doc9", "", True)),
    ("doc_9-raw_data.lock", (D, "doc_9", "raw_data", True)),
    # keys the service is not configured for: the text after the last separator
    ("conv42_summaries.lock", (C, "conv42", "summaries", False)),
    ("conv_4_2_summaries.lock", (C, "conv_4_2", "summaries", False)),
    ("doc9-thumbnails.lock", (D, "doc9", "thumbnails", False)),
    # no reading at all
    ("index.lock", None),
    ("conv42_Summaries.lock", None),      # not a plain word
    ("conv42_messages.txt", None),
    ("_messages.lock", None),             # no owner
    (".hidden_messages.lock", None),      # owner may not start with "."
    ("-x_messages.lock", None),
    ("conv 42_messages.lock", None),      # space is not an owner character
])
def test_parse_lock_name(name: str, expected: Optional[Tuple[str, str, str, bool]]) -> None:
    got = parse_lock_name(name)
    assert (tuple(got) if got is not None else None) == expected


def test_parse_lock_name_with_configured_namespaces() -> None:
    nss = [Namespace("conversation", "{owner}_{field}.lock", ("", "messages", "summaries"))]
    assert parse_lock_name("c_1_summaries.lock", nss) == LockName(C, "c_1", "summaries", True)
    assert parse_lock_name("c_1_artefacts.lock", nss) == LockName(C, "c_1", "artefacts", False)
    assert parse_lock_name("doc9-indices.lock", nss) is None
    prefixed = [Namespace("idx", "index-{owner}.{field}.lock", ("all",))]
    assert parse_lock_name("index-u1.all.lock", prefixed) == LockName("idx", "u1", "all", True)
    assert parse_lock_name("index-u1.other.lock", prefixed) == LockName(
        "idx", "u1", "other", False)


def test_owner_length_limit() -> None:
    assert parse_lock_name("a" * 200 + "_messages.lock") is not None
    assert parse_lock_name("a" * 201 + "_messages.lock") is None


# --------------------------------------------------------------------------- operation


def here() -> str:
    return caller_operation(sys._getframe())


class Wrapper:
    """A context manager of the app's own that takes a lock in its __enter__."""

    def __enter__(self) -> str:
        return caller_operation(sys._getframe())

    def __exit__(self, *exc: object) -> None:
        pass


def save_local() -> str:
    with Wrapper() as op:
        return op


def test_caller_operation_is_the_calling_function() -> None:
    assert here() == "here"
    assert save_local() == "save_local"  # __enter__ frames are skipped
    assert caller_operation(None) == "unknown"


def test_caller_operation_at_module_level_and_in_lambdas() -> None:
    scope = {"__name__": "chat_app", "caller_operation": caller_operation, "sys": sys}
    exec("op = caller_operation(sys._getframe())", scope)
    assert scope["op"] == "chat_app"
    assert (lambda: caller_operation(sys._getframe()))() == "lambda"
    assert next(caller_operation(sys._getframe()) for _ in [1]) == "genexpr"


def test_operation_labels_are_printable_and_bounded() -> None:
    from lockledger_client.file_lock import _label

    assert _label("save\nlocal\t") == "save local"
    assert _label("") == "unknown"
    assert len(_label("é" * 300).encode()) <= 200

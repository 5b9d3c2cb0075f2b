"""Key layout and argument validation.

Every key etcdroute writes lives under one keyspace per namespace::

    <prefix>/<namespace>/pods/<service>/<pod id, 10 digits>   registration
    <prefix>/<namespace>/load/<service>/<pod id, 10 digits>   load report
    <prefix>/<namespace>/links/<service>/<escaped uid>        uid -> pod

A uid is any non-empty text. It is percent-encoded into one key segment
(everything but ``A-Z a-z 0-9 - _ . ~`` becomes ``%XX`` of its UTF-8
bytes, and a uid made only of dots is fully encoded), so ``/`` or ``..``
in a uid is data and can never name another key. Namespaces and service
names are restricted to a safe alphabet instead, and pod ids are
zero-padded so that keys sort in pod order.

All checks run before any I/O and raise :class:`InvalidArgumentError`
naming the argument.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import quote, unquote

from etcdroute.errors import CorruptValueError, InvalidArgumentError

#: Longest uid accepted, in UTF-8 bytes (etcd keys stay far below the
#: 1.5 MiB request limit and index memory stays predictable).
MAX_UID_BYTES = 1024

#: Largest pod id (fits the 10-digit key segment).
MAX_POD_ID = 9_999_999_999

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_POD_DIGITS = 10


def check_name(argument: str, value: object) -> str:
    """Validate a namespace or service name and return it."""
    if not isinstance(value, str):
        raise InvalidArgumentError(argument, "must be a str")
    if not _NAME_RE.fullmatch(value) or ".." in value:
        raise InvalidArgumentError(
            argument,
            f"{value!r} must be 1-63 characters of letters, digits, "
            "'_', '-', '.', start with a letter or digit, and hold no '..'",
        )
    return value


def check_prefix(value: object) -> str:
    """Validate the root prefix (for example ``"etcdroute"``).

    One segment only, with the same alphabet as names: with several
    segments, ``prefix="a/b"`` with namespace ``n`` would live inside
    namespace ``b`` of prefix ``a``, and keyspaces must never overlap.
    """
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise InvalidArgumentError(
            "prefix",
            f"{value!r} must be one segment of 1-63 letters, digits, "
            "'_', '-', '.', starting with a letter or digit",
        )
    if ".." in value:
        raise InvalidArgumentError("prefix", "'..' is refused")
    return value


def check_uid(value: object) -> str:
    """Validate a uid and return it.

    Refused: non-text, empty text, NUL or any other control character
    (Unicode category Cc: C0, DEL and C1), lone surrogates (not encodable
    as UTF-8), more than ``MAX_UID_BYTES``.
    """
    if not isinstance(value, str):
        raise InvalidArgumentError("uid", "must be a str")
    if not value:
        raise InvalidArgumentError("uid", "must not be empty")
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise InvalidArgumentError(
            "uid", "must not contain NUL or other control characters"
        )
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentError("uid", "is not valid UTF-8 text") from None
    if len(encoded) > MAX_UID_BYTES:
        raise InvalidArgumentError(
            "uid",
            f"is {len(encoded)} bytes long; the limit is {MAX_UID_BYTES}",
        )
    return value


def check_pod_id(value: object, argument: str = "pod_id") -> int:
    """Validate a pod id (a non-negative int ordinal) and return it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(argument, "must be an int")
    if value < 0 or value > MAX_POD_ID:
        raise InvalidArgumentError(
            argument, f"{value} is outside 0..{MAX_POD_ID}"
        )
    return value


def encode_uid(uid: str) -> str:
    """Encode a (validated) uid into one safe key segment."""
    if set(uid) == {"."}:
        return "".join("%2E" for _ in uid)
    return quote(uid, safe="")


def decode_uid(segment: str) -> str:
    """Invert :func:`encode_uid`.

    Raises :class:`CorruptValueError` for a segment :func:`encode_uid`
    cannot have produced (a key planted by someone else).
    """
    try:
        uid = unquote(segment, errors="strict")
    except UnicodeDecodeError:
        raise CorruptValueError(segment, "not a percent-encoded uid") from None
    if encode_uid(uid) != segment:
        raise CorruptValueError(segment, "not a percent-encoded uid")
    return uid


@dataclass(frozen=True)
class Keyspace:
    """The keys of one (prefix, namespace), built in one place."""

    prefix: str
    namespace: str

    def __post_init__(self) -> None:
        check_prefix(self.prefix)
        check_name("namespace", self.namespace)

    @property
    def root(self) -> str:
        """Every key of this namespace starts with this."""
        return f"{self.prefix}/{self.namespace}/"

    def pods_prefix(self, service: str) -> str:
        return f"{self.root}pods/{service}/"

    def load_prefix(self, service: str) -> str:
        return f"{self.root}load/{service}/"

    def links_prefix(self, service: str) -> str:
        return f"{self.root}links/{service}/"

    def pod_key(self, service: str, pod_id: int) -> str:
        return f"{self.pods_prefix(service)}{pod_id:0{_POD_DIGITS}d}"

    def load_key(self, service: str, pod_id: int) -> str:
        return f"{self.load_prefix(service)}{pod_id:0{_POD_DIGITS}d}"

    def link_key(self, service: str, uid: str) -> str:
        return f"{self.links_prefix(service)}{encode_uid(uid)}"

    def uid_from_link_key(self, service: str, key: str) -> str:
        """uid of a link key of ``service``."""
        return decode_uid(key[len(self.links_prefix(service)) :])

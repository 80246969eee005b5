"""SOP classes by name: the groups a policy can grant, keywords, and the operation of each class.

Built from pydicom's UID dictionary (PS3.6 Table A-1) plus the few storage classes newer than it.
A storage SOP class is a SOP class whose standard name says "Storage" (PS3.4 Table B.5-1 names
them so), other than Storage Commitment and the media directory: current and retired ones, as
archives receive from modalities that are decades old. Storage sub-groups are chosen by that
name too: "... Image Storage" is an image, "... SR Storage" a structured report, and so on.

A private SOP class (a UID outside the DICOM root 1.2.840.10008 that the standard does not
name: a vendor's raw data or protocol objects) is taken for a storage SOP class. The groups
`storage` and `storage:private` cover every such UID; they cannot be listed, so a policy asks
`covers_private` of its tokens and `is_private` of a proposed UID.

A site service (pacsd/extensions.py) adds its own group, named `site:...`, which is also its
policy operation, with its SOP classes: `register_site_group`, once at start-up.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache

from pydicom._uid_dict import UID_dictionary

VERIFICATION = "1.2.840.10008.1.1"  # PS3.4 A.4
STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"  # PS3.4 J.3
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
DICOM_ROOT = "1.2.840.10008."
# Groups that also cover every private SOP class (is_private).
PRIVATE_GROUPS = frozenset({"storage", "storage:private"})

# Operation names a policy grants (PS3.7 services as operators know them); site services add
# theirs (`operations()`).
OPERATIONS = ("echo", "store", "find", "get", "move", "worklist", "commit", "mpps", "print", "ups")
# Site services (pacsd/extensions.py): the prefix of their group (and operation) names, their
# groups (name -> UID -> keyword) and the group of each of their SOP classes. Empty unless
# `extensions` loads some; filled by register_site_group only.
SITE_PREFIX = "site:"
_SITE_NAME_RE = re.compile(r"^site:[a-z0-9][a-z0-9._-]{0,47}$")
_KEYWORD_RE = re.compile(r"^[A-Z][A-Za-z0-9]{0,63}$")  # as PS3.6 spells them
_SITE_GROUPS: dict[str, dict[str, str]] = {}
_SITE_CLASSES: dict[str, str] = {}

# Storage SOP classes newer than pydicom 3.0's dictionary (PS3.6 Table A-1): UID -> keyword.
_NEWER_STORAGE = {
    "1.2.840.10008.5.1.4.1.1.66.7": "LabelMapSegmentationStorage",
    "1.2.840.10008.5.1.4.1.1.66.8": "HeightMapSegmentationStorage",
    "1.2.840.10008.5.1.4.1.1.9.100.1": "WaveformPresentationStateStorage",
    "1.2.840.10008.5.1.4.1.1.9.100.2": "WaveformAcquisitionPresentationStateStorage",
}
_QR_FIND = frozenset(
    {
        "1.2.840.10008.5.1.4.1.2.1.1",  # Patient Root FIND
        "1.2.840.10008.5.1.4.1.2.2.1",  # Study Root FIND
        "1.2.840.10008.5.1.4.1.2.3.1",  # Patient/Study Only FIND (retired, still in use)
    }
)
_QR_MOVE = frozenset(
    {
        "1.2.840.10008.5.1.4.1.2.1.2",
        "1.2.840.10008.5.1.4.1.2.2.2",
        "1.2.840.10008.5.1.4.1.2.3.2",
        "1.2.840.10008.5.1.4.1.2.4.2",  # Composite Instance Root MOVE
    }
)
_QR_GET = frozenset(
    {
        "1.2.840.10008.5.1.4.1.2.1.3",
        "1.2.840.10008.5.1.4.1.2.2.3",
        "1.2.840.10008.5.1.4.1.2.3.3",
        "1.2.840.10008.5.1.4.1.2.4.3",  # Composite Instance Root GET
        "1.2.840.10008.5.1.4.1.2.5.3",  # Composite Instance Retrieve Without Bulk Data GET
    }
)
_WORKLIST = frozenset({"1.2.840.10008.5.1.4.31"})  # Modality Worklist FIND, PS3.4 K.6.1
# Print Management (PS3.4 H): the Meta SOP Classes a print SCU negotiates, their member SOP
# classes (the Affected SOP Class of the messages sent on a Meta SOP Class's context), and the
# optional SOP classes negotiated on their own.
BASIC_GRAYSCALE_PRINT_META = "1.2.840.10008.5.1.1.9"
BASIC_COLOR_PRINT_META = "1.2.840.10008.5.1.1.18"
BASIC_FILM_SESSION = "1.2.840.10008.5.1.1.1"
BASIC_FILM_BOX = "1.2.840.10008.5.1.1.2"
BASIC_GRAYSCALE_IMAGE_BOX = "1.2.840.10008.5.1.1.4"
BASIC_COLOR_IMAGE_BOX = "1.2.840.10008.5.1.1.4.1"
PRINTER = "1.2.840.10008.5.1.1.16"
META_SOP_CLASSES: dict[str, frozenset[str]] = {
    BASIC_GRAYSCALE_PRINT_META: frozenset(
        {BASIC_FILM_SESSION, BASIC_FILM_BOX, BASIC_GRAYSCALE_IMAGE_BOX, PRINTER}
    ),
    BASIC_COLOR_PRINT_META: frozenset(
        {BASIC_FILM_SESSION, BASIC_FILM_BOX, BASIC_COLOR_IMAGE_BOX, PRINTER}
    ),
}
_PRINT = frozenset(
    {
        *META_SOP_CLASSES,
        *META_SOP_CLASSES[BASIC_GRAYSCALE_PRINT_META],
        BASIC_COLOR_IMAGE_BOX,
        "1.2.840.10008.5.1.1.23",  # Presentation LUT
        "1.2.840.10008.5.1.1.15",  # Basic Annotation Box
        "1.2.840.10008.5.1.1.14",  # Print Job
        "1.2.840.10008.5.1.1.16.376",  # Printer Configuration Retrieval
    }
)
# Unified Procedure Step (PS3.4 CC): Push, Watch, Pull, Event, Query.
_UPS = frozenset(f"1.2.840.10008.5.1.4.34.6.{n}" for n in range(1, 6))
UPS_PUSH = "1.2.840.10008.5.1.4.34.6.1"
# A workitem's SOP Class is UPS Push whichever UPS SOP Class the SCU negotiated (PS3.4 CC.3.1):
# a performer that negotiated only UPS Pull or Watch names UPS Push in its N-GET, N-SET and
# N-ACTION requests, and pacsd's N-EVENT-REPORTs name it on UPS Event contexts.
_UPS_CARRIERS = {uid: frozenset({UPS_PUSH}) for uid in _UPS - {UPS_PUSH}}
_MPPS = frozenset(
    {
        "1.2.840.10008.3.1.2.3.3",  # Modality Performed Procedure Step, PS3.4 F.7
        "1.2.840.10008.3.1.2.3.4",  # ... Retrieve
        "1.2.840.10008.3.1.2.3.5",  # ... Notification
    }
)


@cache
def _entries() -> dict[str, tuple[str, str]]:
    """UID -> (name, keyword) of every SOP class pacsd can name."""
    entries = {
        uid: (str(entry[0]), str(entry[4]))
        for uid, entry in UID_dictionary.items()
        if entry[1] in ("SOP Class", "Meta SOP Class")
    }
    entries.update({uid: (keyword, keyword) for uid, keyword in _NEWER_STORAGE.items()})
    return entries


def _names_storage(name: str) -> bool:
    """True when a SOP class name says storage (not Storage Commitment, not the directory)."""
    return "Storage" in name and not name.startswith("Storage ") and "Directory" not in name


@cache
def storage_sop_classes() -> frozenset[str]:
    """Every storage SOP class of the standard, current and retired (PS3.4 Annex B and friends)."""
    return frozenset(uid for uid, (name, _) in _entries().items() if _names_storage(name))


@cache
def retired_storage_sop_classes() -> frozenset[str]:
    """The retired ones among them (PS3.6 Table A-1 marks them "Retired")."""
    return frozenset(
        uid
        for uid in storage_sop_classes()
        if UID_dictionary.get(uid, ("", "", "", ""))[3] == "Retired"
    )


def is_private(uid: str) -> bool:
    """True for a syntactically valid UID outside the DICOM root that names no standard SOP
    class: a private SOP class, taken for a storage one. An unknown UID under the DICOM root
    is not (a SOP class newer than pacsd, or a UID that is no SOP class)."""
    return (
        len(uid) <= 64
        and not uid.startswith(DICOM_ROOT)
        and uid not in _entries()
        and uid not in _SITE_CLASSES
        and _UID_RE.match(uid) is not None
    )


def is_site(uid: str) -> bool:
    """True for a SOP class of a site service (register_site_group)."""
    return uid in _SITE_CLASSES


def covers_private(token: str) -> bool:
    """True when a policy's SOP class entry covers every private SOP class."""
    return token in PRIVATE_GROUPS


def sop_class_keyword(uid: str) -> str:
    """The keyword of a SOP class, or the UID itself when the standard does not name it."""
    entry = _entries().get(uid)
    if entry is None:
        group = _SITE_CLASSES.get(uid)
        return _SITE_GROUPS[group][uid] if group is not None else uid
    return entry[1]


def _storage_where(*needles: str) -> frozenset[str]:
    return frozenset(
        uid
        for uid in storage_sop_classes()
        if any(needle in _entries()[uid][0] or needle in _entries()[uid][1] for needle in needles)
    )


@cache
def groups() -> dict[str, frozenset[str]]:
    """Named groups of SOP classes, as written in a policy's `sop_classes`."""
    structured_reports = _storage_where(" SR ", "SRStorage", "Key Object Selection")
    return {
        "verification": frozenset({VERIFICATION}),
        "storage": storage_sop_classes(),  # and every private SOP class (covers_private)
        "storage:retired": retired_storage_sop_classes(),
        "storage:private": frozenset(),  # no listable member: every private SOP class
        "storage:image": _storage_where("Image"),
        "storage:sr": structured_reports,
        "storage:presentation-state": _storage_where("Presentation State", "PresentationState"),
        "storage:waveform": _storage_where("Waveform"),
        "storage:document": _storage_where("Encapsulated"),
        "storage:rt": _storage_where("RT ", "Radiation") - structured_reports,
        "query-retrieve": _QR_FIND | _QR_MOVE | _QR_GET,
        "query-retrieve:find": _QR_FIND,
        "query-retrieve:move": _QR_MOVE,
        "query-retrieve:get": _QR_GET,
        "worklist": _WORKLIST,
        "storage-commitment": frozenset({STORAGE_COMMITMENT_PUSH}),
        "mpps": _MPPS,
        "print": _PRINT,
        "ups": _UPS,
        **{name: frozenset(members) for name, members in _SITE_GROUPS.items()},
    }


@cache
def _keywords() -> dict[str, str]:
    """Keyword -> UID for every SOP class the standard names (some retired ones have none)
    and every site service's."""
    keywords = {keyword: uid for uid, (_, keyword) in _entries().items() if keyword}
    keywords.update(
        {keyword: uid for members in _SITE_GROUPS.values() for uid, keyword in members.items()}
    )
    return keywords


def resolve(token: str) -> frozenset[str]:
    """The SOP class UIDs a policy entry names: a group, a keyword or a UID.

    Raises ValueError naming the entry when it is none of these.
    """
    named = groups().get(token)
    if named is not None:
        return named
    uid = _keywords().get(token)
    if uid is not None:
        return frozenset({uid})
    if _UID_RE.match(token) and len(token) <= 64:
        return frozenset({token})
    if token.startswith(SITE_PREFIX):
        loaded = ", ".join(_SITE_GROUPS) or "none"
        raise ValueError(
            f"{token!r} names no site service of a loaded extension (loaded: {loaded}; "
            "`extensions` lists the ones pacsd loads at start-up)"
        )
    raise ValueError(
        f"{token!r} is not a SOP class group ({', '.join(groups())}), "
        "a SOP class keyword such as CTImageStorage, or a UID"
    )


def operation_of(uid: str) -> str:
    """The policy operation a SOP class is used for.

    A UID that names no standard SOP class is taken for a (private) storage SOP class, and a
    retired storage SOP class is one (old modalities still send them); a known SOP class of a
    service pacsd does not offer (print management, say) gives "other".
    """
    if uid == VERIFICATION:
        return "echo"
    site = _SITE_CLASSES.get(uid)
    if site is not None:
        return site
    for operation, members in (
        ("find", _QR_FIND),
        ("move", _QR_MOVE),
        ("get", _QR_GET),
        ("worklist", _WORKLIST),
        ("commit", {STORAGE_COMMITMENT_PUSH}),
        ("mpps", _MPPS),
        ("print", _PRINT),
        ("ups", _UPS),
    ):
        if uid in members:
            return operation
    entry = _entries().get(uid)
    if entry is None or _names_storage(entry[0]):
        return "store"
    return "other"


def is_storage(uid: str) -> bool:
    """True for storage SOP classes: standard (current or retired) or private."""
    return operation_of(uid) == "store"


def in_context(sop_class_uid: str, abstract_syntax: str) -> bool:
    """May a message of `sop_class_uid` travel on a context of `abstract_syntax`? Its own, or
    a member of the Meta SOP Class the context negotiated (PS3.4 H.3: a print SCU sends its
    Film Session, Film Box, Image Box and Printer messages on the Meta SOP Class's context), or
    UPS Push on any UPS context (PS3.4 CC.3.1)."""
    if sop_class_uid == abstract_syntax:
        return True
    carried = META_SOP_CLASSES.get(abstract_syntax) or _UPS_CARRIERS.get(abstract_syntax)
    return carried is not None and sop_class_uid in carried


def operations() -> tuple[str, ...]:
    """Every operation a policy can grant: the built-in ones, then the site services'."""
    return (*OPERATIONS, *_SITE_GROUPS)


def site_name_problem(name: str) -> str | None:
    """What is wrong with a site service's name (its group and operation), or None."""
    if not _SITE_NAME_RE.match(name):
        return (
            f"name {name!r} is not site: followed by 1 to 48 lowercase letters, digits, "
            "'.', '_' or '-' (e.g. site:dose-check)"
        )
    if name in _SITE_GROUPS:
        return f"name {name!r} is taken by another site service"
    return None


def site_class_problem(uid: str, keyword: str) -> str | None:
    """What keeps a SOP class from being a site service's, or None.

    A site serves what pacsd does not: a private SOP class (a UID outside the DICOM root that
    the standard does not name), or a standard SOP class of a service pacsd has none for
    (operation "other", e.g. Instance Availability Notification, PS3.4 R). Never a storage
    SOP class or a member of a built-in group, and each UID and keyword belongs to one site.
    """
    if not (_UID_RE.match(uid) and len(uid) <= 64):
        return f"{uid!r} is not a UID (PS3.5 9.1: digits and dots, at most 64 characters)"
    if uid in _SITE_CLASSES:
        return f"SOP class {uid} is served by {_SITE_CLASSES[uid]} already"
    if uid.startswith(DICOM_ROOT):
        if uid not in _entries():
            return f"{uid} is under the DICOM root but names no SOP class the standard defines"
        if operation_of(uid) != "other":
            return f"{uid} ({sop_class_keyword(uid)}) is a SOP class pacsd serves itself"
    if not _KEYWORD_RE.match(keyword):
        return f"keyword {keyword!r} of {uid} is not a capital letter, then letters and digits"
    if keyword in _keywords() and _keywords()[keyword] != uid:
        return f"keyword {keyword!r} of {uid} names another SOP class"
    return None


def register_site_group(name: str, members: Mapping[str, str]) -> None:
    """Add a site service's group (named `name`, also its policy operation) and its SOP
    classes (UID -> keyword) to the tables; ValueError when the name or a class is not free.

    The tables are module-level and read without a lock by negotiation, routing and the
    policy: call this only while the configuration loads at start-up (pacsd.extensions does),
    before anything reads them; forked workers inherit the result. It clears the cached
    groups and keywords.
    """
    problem = site_name_problem(name) or next(
        (p for uid, kw in members.items() if (p := site_class_problem(uid, kw)) is not None),
        None,
    )
    keywords = list(members.values())
    if problem is None and len(set(keywords)) < len(keywords):
        problem = f"a keyword is given to two SOP classes of {name}"
    if problem is not None:
        raise ValueError(problem)
    _SITE_GROUPS[name] = dict(members)
    _SITE_CLASSES.update(dict.fromkeys(members, name))
    groups.cache_clear()
    _keywords.cache_clear()

"""The `policies` section of the configuration: what an operator writes, validated.

Every name a rule uses (SOP class groups and keywords, transfer syntax groups, addresses, reject
reasons) is checked here, so a mistake stops start-up or a reload with one line naming the key.
"""

from __future__ import annotations

import ipaddress
from contextvars import ContextVar
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from pacsd.dicom import sop_classes, transfer_syntaxes

CALLING_AE = "$calling"  # in move_destinations: the calling AE title itself
# True while settings.load_settings validates a configuration whose `extensions` are not loaded
# yet (its first pass): `site:` groups and operations are taken on trust then, and checked by
# the second pass, once the extensions registered theirs (dicom/sop_classes.py).
SITE_NAMES_PENDING: ContextVar[bool] = ContextVar("site_names_pending", default=False)


def _listify(value: object) -> object:
    """One value or a list of values: YAML `calling_ae: CT1` means `[CT1]`; `104` means "104"."""
    values = [value] if isinstance(value, str | int) else value
    if isinstance(values, list):
        return [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in values]
    return values


def _check_pattern(value: str) -> str:
    stripped = value.strip()
    if not stripped or "\\" in value or any(ord(c) < 0x20 for c in value) or len(value) > 64:
        raise ValueError("a pattern is printable text without backslash, e.g. CT1 or CT_*")
    return stripped


def _check_network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(str(value).strip(), strict=True))
    except ValueError as exc:
        raise ValueError(f"not an IP address or CIDR network: {exc}") from None


def _site_name_pending(value: str) -> bool:
    return value.startswith(sop_classes.SITE_PREFIX) and SITE_NAMES_PENDING.get()


def _check_sop_class(value: str) -> str:
    if not _site_name_pending(value):
        sop_classes.resolve(value)
    return value


def _check_operation(value: str) -> str:
    if value not in sop_classes.operations() and not _site_name_pending(value):
        raise ValueError(
            f"{value!r} is not an operation ({', '.join(sop_classes.operations())}, "
            "or a site service's site:...)"
        )
    return value


def _check_transfer_syntax(value: str) -> str:
    transfer_syntaxes.resolve(value)
    return value


def _check_destination(value: str) -> str:
    return value if value == CALLING_AE else _check_pattern(value)


def _check_text_pattern(value: str) -> str:
    if not value.strip() or any(ord(c) < 0x20 for c in value) or len(value) > 1024:
        raise ValueError("a pattern is 1 to 1024 printable characters, e.g. CN=ct1.example.org*")
    return value.strip()


Pattern = Annotated[str, AfterValidator(_check_pattern)]
Patterns = Annotated[list[Pattern], BeforeValidator(_listify), Field(min_length=1)]
# TLS subjects (RFC 4514, with backslash escapes) and usernames are longer than AE titles.
TextPatterns = Annotated[
    list[Annotated[str, AfterValidator(_check_text_pattern)]],
    BeforeValidator(_listify),
    Field(min_length=1),
]
Networks = Annotated[
    list[Annotated[str, AfterValidator(_check_network)]],
    BeforeValidator(_listify),
    Field(min_length=1),
]
SopClasses = Annotated[
    list[Annotated[str, AfterValidator(_check_sop_class)]], BeforeValidator(_listify)
]
TransferSyntaxes = Annotated[
    list[Annotated[str, AfterValidator(_check_transfer_syntax)]],
    BeforeValidator(_listify),
    Field(min_length=1),
]
# sop_classes.OPERATIONS, and the operations of the site services loaded (pacsd.extensions).
Operation = Annotated[str, AfterValidator(_check_operation)]
# How C-FIND and worklist keys of VR PN match when the peer negotiated nothing (PS3.4
# C.2.2.2.1.1): exactly, ignoring case, or as pacsd's fuzzy semantic matching does.
PersonNameMatching = Literal["exact", "case-insensitive", "fuzzy"]


class RuleModel(BaseModel):
    """Base of the policy models: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Match(RuleModel):
    """What a rule matches; every key given must fit (AND), any entry of a list may (OR)."""

    calling_ae: Patterns | None = None
    called_ae: Patterns | None = None
    address: Networks | None = None
    tls_subject: TextPatterns | None = None
    username: TextPatterns | None = None


class RejectReason(StrEnum):
    """A-ASSOCIATE-RJ reasons an operator can name (PS3.8 Table 9-21)."""

    NO_REASON = "no-reason"
    APPLICATION_CONTEXT_NOT_SUPPORTED = "application-context-not-supported"
    CALLING_AE_NOT_RECOGNISED = "calling-ae-not-recognised"
    CALLED_AE_NOT_RECOGNISED = "called-ae-not-recognised"
    TEMPORARY_CONGESTION = "temporary-congestion"
    LOCAL_LIMIT_EXCEEDED = "local-limit-exceeded"


class Limits(RuleModel):
    """Per-rule limits; None means only the global ones apply."""

    max_associations: int | None = Field(default=None, ge=1)
    max_associations_per_calling_ae: int | None = Field(default=None, ge=1)
    max_pdu_size: int | None = Field(default=None, ge=4096)
    # PS3.7 D.3.3.3: how many operations the peer may have outstanding; 1 is synchronous.
    async_operations_window: int = Field(default=1, ge=1, le=65535)


class TransferSyntaxOverride(RuleModel):
    """Transfer syntaxes, in order of preference, for some of the rule's SOP classes."""

    sop_classes: Annotated[SopClasses, Field(min_length=1)]
    transfer_syntaxes: TransferSyntaxes


class PolicyRule(RuleModel):
    """One acceptance rule; the first whose `match` fits an association decides."""

    name: str = Field(min_length=1)
    match: Match = Match()
    action: Literal["accept", "reject"] = "accept"
    reject_reason: RejectReason = RejectReason.NO_REASON
    reject_result: Literal["permanent", "transient"] | None = None
    sop_classes: SopClasses = Field(default_factory=list)
    exclude_sop_classes: SopClasses = Field(default_factory=list)
    transfer_syntaxes: TransferSyntaxes = Field(default_factory=lambda: ["all"])
    transfer_syntax_overrides: list[TransferSyntaxOverride] = Field(default_factory=list)
    peer_scp_role: SopClasses = Field(default_factory=list)
    operations: list[Operation] | None = None
    move_destinations: Annotated[
        list[Annotated[str, AfterValidator(_check_destination)]], BeforeValidator(_listify)
    ] = Field(default_factory=lambda: ["*"])
    limits: Limits = Limits()
    # User identity negotiation (PS3.7 D.3.3.7) for associations this rule accepts:
    # "not-accepted" ignores a sent identity (no check, no response, no username);
    # "optional" verifies one when sent and rejects when it is wrong; "required" also rejects
    # when none (or one pacsd cannot verify) is sent. `match.username` sees verified names only.
    user_identity: Literal["not-accepted", "optional", "required"] = "optional"
    # Person name matching for this rule's associations when the peer did not negotiate fuzzy
    # semantic matching (PS3.4 C.5.1.1, K.5.1); None: the global
    # `query.person_name_case_insensitive` decides (case-insensitive when true, else exact).
    person_name_matching: PersonNameMatching | None = None

    @model_validator(mode="after")
    def _accept_names_sop_classes(self) -> PolicyRule:
        if self.action == "accept" and not self.sop_classes:
            raise ValueError(
                f"rule {self.name!r} accepts but names no sop_classes "
                "(e.g. [verification, storage])"
            )
        if self.user_identity == "not-accepted" and self.match.username is not None:
            raise ValueError(
                f"rule {self.name!r} matches a username but does not accept user identities "
                "(user_identity: not-accepted)"
            )
        return self


def default_policies() -> list[PolicyRule]:
    """The embedded default: every peer may echo, store, query and retrieve, fetch the worklist,
    report performed procedure steps, request storage commitment, manage and watch unified
    procedure steps, and print (to files)."""
    return [
        PolicyRule(
            name="accept-all",
            sop_classes=[
                "verification",
                "storage",
                "query-retrieve",
                "worklist",
                "mpps",
                "storage-commitment",
                "ups",
                "print",
            ],
            peer_scp_role=["storage"],
        )
    ]

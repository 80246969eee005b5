"""A DICOM Conformance Statement (PS3.2) made from the configuration in force.

Vendors write conformance statements by hand and they drift from what the product does; this
one is derived from the same objects the engine decides with. The SOP classes, transfer
syntaxes and roles come from each accepting rule's compiled `Grant` through
`engine/negotiation.accepted_syntaxes` (the function negotiation answers with) and
`Grant.peer_may_be_scp`; the extended negotiation replies from `negotiation.extended_options`;
the character sets from pydicom's table, which C-FIND decodes with. The rest (ports, limits,
TLS, user identity, peers) is read from `Settings`.

The document follows PS3.2 Annex A's layout. It is a small model (sections of paragraphs,
bullet lists and tables) with two renderings: Markdown (`render_markdown`) and one
self-contained HTML page (`render_html`). Every configured text is escaped in both, so an AE
title or a peer description cannot inject markup. Used by `pacsd conformance` and by the HTTP
side's `GET /conformance`; no I/O here.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydicom.charset import python_encoding
from pydicom.uid import UID

from pacsd import __version__
from pacsd.dicom import sop_classes, transfer_syntaxes
from pacsd.dicom.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacsd.engine.negotiation import FIND_FIELDS, accepted_syntaxes, extended_options
from pacsd.engine.pdu import APPLICATION_CONTEXT_NAME
from pacsd.policy.engine import Grant, Policy
from pacsd.policy.identity import IdentityVerifier
from pacsd.policy.rules import PolicyRule
from pacsd.runtime import compile_policy
from pacsd.settings import Settings

PRIVATE_ROW = "any private SOP class"  # a UID outside 1.2.840.10008 (sop_classes.is_private)
CONTEXTS_CAPTION = "Presentation contexts accepted"
SYNTAX_SETS_CAPTION = "Transfer syntax sets"
# Services by policy operation (sop_classes.operation_of), in the order of the overview.
SERVICES = (
    ("echo", "Verification"),
    ("store", "Storage"),
    ("find", "Query/Retrieve (C-FIND)"),
    ("move", "Query/Retrieve (C-MOVE)"),
    ("get", "Query/Retrieve (C-GET)"),
    ("worklist", "Modality Worklist"),
    ("mpps", "Modality Performed Procedure Step"),
    ("commit", "Storage Commitment Push Model"),
    ("ups", "Unified Procedure Step"),
    ("print", "Print Management"),
)


@dataclass(frozen=True)
class Code:
    """Text shown as code (a UID)."""

    text: str


Line = str | Code


@dataclass(frozen=True)
class Table:
    """A captioned table; each cell is one or more lines."""

    caption: str
    columns: tuple[str, ...]
    rows: tuple[tuple[tuple[Line, ...], ...], ...]


@dataclass(frozen=True)
class Bullets:
    """A bulleted list."""

    items: tuple[str, ...]


Block = str | Bullets | Table  # a str is a paragraph


@dataclass(frozen=True)
class Section:
    """A numbered section; "4.2.1" is a third-level heading."""

    number: str
    title: str
    blocks: tuple[Block, ...] = ()


@dataclass(frozen=True)
class Document:
    """The whole statement."""

    title: str
    sections: tuple[Section, ...]


@dataclass
class Accepted:
    """What the AE accepts for one SOP class: the union over the accepting rules."""

    syntaxes: list[str] = field(default_factory=list)  # pacsd's preference first
    peer_scp: bool = False  # a rule lets the requestor take the SCP role (pacsd the SCU)
    rules: list[str] = field(default_factory=list)


def accepted_contexts(policy: Policy) -> dict[str, Accepted]:
    """SOP class UID (or PRIVATE_ROW) -> what some accepting rule grants for it, as negotiation
    answers a requestor that proposes it (`negotiation.accepted_syntaxes`)."""
    accepted: dict[str, Accepted] = {}
    for rule in policy.rules:
        if rule.grant is None:
            continue
        for uid, syntaxes, peer_scp in _granted(rule.grant):
            entry = accepted.setdefault(uid, Accepted())
            entry.syntaxes.extend(ts for ts in syntaxes if ts not in entry.syntaxes)
            entry.peer_scp = entry.peer_scp or peer_scp
            entry.rules.append(rule.name)
    order = {operation: index for index, (operation, _) in enumerate(SERVICES)}
    return dict(
        sorted(
            accepted.items(),
            key=lambda item: (order.get(_operation(item[0]), len(order)), _sop_name(item[0])),
        )
    )


def _granted(grant: Grant) -> Iterator[tuple[str, tuple[str, ...], bool]]:
    for uid in sorted(grant.transfer_syntaxes):
        syntaxes = accepted_syntaxes(grant, uid)
        if syntaxes is not None:
            yield uid, syntaxes, grant.peer_may_be_scp(uid)
    if grant.private_storage is not None:
        yield PRIVATE_ROW, grant.private_storage, grant.private_peer_scp


def build(
    settings: Settings, policy: Policy | None = None, source: str = "", now: datetime | None = None
) -> Document:
    """The conformance statement of `settings` (and its compiled `policy`)."""
    policy = policy or compile_policy(settings)
    accepted = accepted_contexts(policy)
    when = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    title = f"DICOM Conformance Statement: pacsd {__version__}"
    origin = f"the configuration {source}" if source else "the configuration in force"
    sections = (
        Section(
            "1",
            "Overview",
            (
                f"Generated by pacsd {__version__} from {origin} on {when}. Every SOP class, "
                "transfer syntax and role below is what the engine's negotiation accepts under "
                "the policy rules in force; nothing else is accepted.",
                _services_table(accepted),
            ),
        ),
        *_implementation_model(settings, accepted),
        *_ae_specification(settings, policy, accepted),
        *_network(settings),
        *_configuration(settings),
        Section("5", "Media Interchange", ("pacsd does not read or write media.",)),
        _character_sets(),
        *_security(settings, policy),
    )
    return Document(title, sections)


def _offers(accepted: dict[str, Accepted], *operations: str) -> bool:
    return any(_operation(uid) in operations for uid in accepted)


def _operation(uid: str) -> str:
    return "store" if uid == PRIVATE_ROW else sop_classes.operation_of(uid)


def _services_table(accepted: dict[str, Accepted]) -> Table:
    rows = []
    names = dict(SERVICES)
    operations = list(names) + sorted({_operation(u) for u in accepted} - set(names))
    for operation in operations:
        count = sum(1 for uid in accepted if _operation(uid) == operation)
        scp = "Yes" if count else "No"
        scu = "No"
        if operation == "store" and _offers(accepted, "move", "get"):
            scu = "Yes (C-STORE sub-operations of C-MOVE and C-GET)"
        name = names.get(operation, f"Site service {operation}")
        rows.append(((name,), (str(count),), (scu,), (scp,)))
    columns = ("Network service", "SOP classes accepted", "User (SCU)", "Provider (SCP)")
    return Table("Network services", columns, tuple(rows))


def _implementation_model(settings: Settings, accepted: dict[str, Accepted]) -> list[Section]:
    ae = settings.ae_title
    flow = [
        f"Remote AEs associate with {ae} and send instances (C-STORE); each is answered "
        "Success only once its file and its index row are durable.",
    ]
    if _offers(accepted, "find", "worklist", "ups"):
        flow.append("Remote AEs query the index (C-FIND: Q/R, worklist, UPS).")
    if _offers(accepted, "move", "get"):
        flow.append(
            f"Remote AEs retrieve: {ae} sends the instances as C-STORE sub-operations, on the "
            "same association (C-GET) or on a new one to the destination (C-MOVE)."
        )
    if _offers(accepted, "commit"):
        flow.append(f"{ae} checks committed instances and reports (N-EVENT-REPORT).")
    if _offers(accepted, "ups"):
        flow.append(f"{ae} sends UPS event reports to subscribers.")
    if _offers(accepted, "print"):
        flow.append(f"{ae} prints films to PNG and PDF files.")
    return [
        Section("4", "Networking"),
        Section("4.1", "Implementation Model"),
        Section("4.1.1", "Application Data Flow", (Bullets(tuple(flow)),)),
        Section(
            "4.1.2",
            "Functional Definition of AEs",
            (
                f"One Application Entity, {ae}, is both Storage SCP and archive: it accepts "
                "associations on every listener of every worker process, and initiates "
                "associations for C-MOVE sub-operations and for reports.",
            ),
        ),
        Section(
            "4.1.3",
            "Sequencing of Real-World Activities",
            (
                "An instance can be queried, retrieved and committed once its C-STORE was "
                "answered Success. Storage commitment is reported after the commitment request "
                "was answered.",
            ),
        ),
    ]


def _ae_specification(
    settings: Settings, policy: Policy, accepted: dict[str, Accepted]
) -> list[Section]:
    ae = settings.ae_title
    return [
        Section("4.2", "AE Specifications"),
        Section(
            "4.2.1",
            f"{ae} AE Specification",
            (
                "The SOP classes below are accepted as SCP (the requestor is SCU); SCU means the "
                "requestor may also take the SCP role by SCP/SCU role selection (PS3.7 "
                "D.3.3.4), with pacsd sending on that context (C-GET's C-STOREs).",
                _sop_class_table(accepted),
            ),
        ),
        Section("4.2.1.1", "Association Policies", _association_policies(settings, policy)),
        Section("4.2.1.2", "Association Initiation Policy", _initiation(settings, accepted)),
        Section("4.2.1.3", "Association Acceptance Policy", _acceptance(policy)),
        Section("4.2.1.4", "Accepted Presentation Contexts", _contexts(accepted)),
    ]


def _sop_name(uid: str) -> str:
    if uid == PRIVATE_ROW:
        return "Private SOP classes (UIDs outside 1.2.840.10008), as storage"
    name = UID(uid).name
    return name if name != uid else sop_classes.sop_class_keyword(uid)


def _uid_cell(uid: str) -> tuple[Line, ...]:
    return (PRIVATE_ROW,) if uid == PRIVATE_ROW else (Code(uid),)


def _sop_class_table(accepted: dict[str, Accepted]) -> Table:
    rows = tuple(
        ((_sop_name(uid),), _uid_cell(uid), ("Yes" if entry.peer_scp else "No",), ("Yes",))
        for uid, entry in accepted.items()
    )
    columns = ("SOP class", "UID", "SCU (role selection)", "SCP")
    return Table("SOP classes", columns, rows)


def _association_policies(settings: Settings, policy: Policy) -> tuple[Block, ...]:
    network = settings.network
    pdu = str(network.max_pdu_size) if network.max_pdu_size else "no limit (0)"
    windows = sorted({r.source.limits.async_operations_window for r in policy.rules if r.grant})
    rows: list[tuple[str, Line]] = [
        ("Application context name", Code(APPLICATION_CONTEXT_NAME)),
        ("Maximum PDU length received", f"{pdu} bytes (a rule's limits.max_pdu_size may lower it)"),
        ("Associations at once", f"{network.max_associations} in all"),
        ("... from one address", str(network.max_associations_per_address)),
        ("Asynchronous operations window", ", ".join(map(str, windows)) or "1"),
        ("Implementation Class UID", Code(IMPLEMENTATION_CLASS_UID)),
        ("Implementation Version Name", IMPLEMENTATION_VERSION_NAME),
        ("ARTIM / idle / DIMSE timeouts", _timeouts(settings)),
    ]
    table = Table("Association parameters", ("Parameter", "Value"), _pairs(rows))
    return (table,)


def _timeouts(settings: Settings) -> str:
    network = settings.network
    return f"{network.acse_timeout} s / {network.network_timeout} s / {network.dimse_timeout} s"


def _pairs(rows: Iterable[tuple[str, Line]]) -> tuple[tuple[tuple[Line, ...], ...], ...]:
    return tuple(((name,), (value,)) for name, value in rows)


def _initiation(settings: Settings, accepted: dict[str, Accepted]) -> tuple[Block, ...]:
    ae = settings.ae_title
    items = []
    if _offers(accepted, "move"):
        items.append(
            "C-MOVE: a new association to the destination's entry in the peers table "
            "(DICOM TLS for a peer marked tls), proposing each instance's SOP class with the "
            "transfer syntax it is stored in and the uncompressed ones; released at the end."
        )
    if _offers(accepted, "commit"):
        where = " while it is open, else" if settings.commitment.report_on_same_association else ""
        items.append(
            f"Storage commitment: the N-EVENT-REPORT goes on the requesting association{where} "
            f"on a new association to the requester's peers entry, where {ae} proposes the SCP "
            "role; retried with back-off until delivered or given up."
        )
    if _offers(accepted, "ups"):
        items.append(
            "UPS event reports: on the subscriber's open association with a UPS Event context, "
            f"else on a new association to its peers entry, where {ae} proposes the SCP role."
        )
    if not items:
        return (f"{ae} initiates no association under this configuration.",)
    return (Bullets(tuple(items)),)


def _acceptance(policy: Policy) -> tuple[Block, ...]:
    rows = []
    for rule in policy.rules:
        source = rule.source
        rows.append(
            (
                (source.name,),
                (_match(source),),
                (source.action,),
                _written(source.sop_classes, source.exclude_sop_classes),
                _written_syntaxes(source),
                _written(source.peer_scp_role, []),
                (_operations(rule.grant),),
                (source.user_identity if rule.grant else "",),
            )
        )
    columns = (
        "Rule", "Matches", "Action", "SOP classes", "Transfer syntaxes", "SCU role for",
        "Operations", "User identity",
    )  # fmt: skip
    return (
        "The first rule whose match fits the association request decides; no match rejects "
        "(calling AE title not recognised). The presentation contexts below are the union of "
        "what the accepting rules grant; this table says which rule grants what.",
        Table("Policy rules", columns, tuple(rows)),
    )


def _match(rule: PolicyRule) -> str:
    match = rule.match
    parts = [
        f"{what} {', '.join(values)}"
        for what, values in (
            ("calling AE", match.calling_ae),
            ("called AE", match.called_ae),
            ("address", match.address),
            ("TLS subject", match.tls_subject),
            ("username", match.username),
        )
        if values
    ]
    return "; ".join(parts) or "any"


def _token(token: str) -> str:
    """A policy entry as a name: a UID becomes its keyword where the standard names it."""
    return sop_classes.sop_class_keyword(token) if token[:1].isdigit() else token


def _written(tokens: Sequence[str], excluded: Sequence[str]) -> tuple[Line, ...]:
    return (*map(_token, tokens), *(f"except {_token(t)}" for t in excluded))


def _written_syntaxes(rule: PolicyRule) -> tuple[Line, ...]:
    if rule.action != "accept":
        return ()
    lines = [", ".join(rule.transfer_syntaxes) + " (storage)"]
    lines += [
        f"{', '.join(map(_token, o.sop_classes))}: {', '.join(o.transfer_syntaxes)}"
        for o in rule.transfer_syntax_overrides
    ]
    return tuple(lines)


def _operations(grant: Grant | None) -> str:
    return ", ".join(sorted(grant.operations)) if grant is not None else ""


def _contexts(accepted: dict[str, Accepted]) -> tuple[Block, ...]:
    sets: dict[tuple[str, ...], str] = {}
    rows = []
    for uid, entry in accepted.items():
        key = tuple(entry.syntaxes)
        name = sets.setdefault(key, f"TS-{len(sets) + 1}")
        role = "SCP, or SCU by role selection" if entry.peer_scp else "SCP"
        rows.append(((_sop_name(uid),), _uid_cell(uid), (name,), (role,), _extended(uid)))
    set_rows = tuple(
        ((name,), tuple(_syntax_name(ts) for ts in key), tuple(Code(ts) for ts in key))
        for key, name in sets.items()
    )
    columns = ("Abstract syntax", "UID", "Transfer syntaxes", "Role", "Extended negotiation")
    return (
        "For each proposed context pacsd accepts the first syntax of its set, in the order "
        "below, that the requestor proposed (PS3.8 9.3.3.2); where pacsd will send on the "
        "context (SCU role), the requestor's first proposed syntax of the set.",
        Table(CONTEXTS_CAPTION, columns, tuple(rows)),
        Table(SYNTAX_SETS_CAPTION, ("Set", "Transfer syntax", "UID"), set_rows),
        "A storage SOP class newer than pacsd (under 1.2.840.10008, unknown to it) is "
        "accepted as its related general SOP class when the requestor names one that is "
        "accepted, by SOP Class Common Extended Negotiation (PS3.4 B.3.1.4, PS3.7 D.3.3.6).",
    )


def _syntax_name(uid: str) -> str:
    name = UID(uid).name
    # pydicom 3.0 does not name the newest syntaxes; transfer_syntaxes.py keeps their keywords.
    return name if name != uid else transfer_syntaxes._NEWER_KEYWORDS.get(uid, uid)


def _extended(uid: str) -> tuple[Line, ...]:
    """What SOP Class Extended Negotiation agrees to when the requestor asks for everything
    (`negotiation.extended_options`, PS3.7 D.3.3.5)."""
    if uid == PRIVATE_ROW:
        uid = "1.2.3.4"  # any private UID: a storage SOP class
    options = extended_options(uid, bytes([1] * FIND_FIELDS))
    operation = sop_classes.operation_of(uid)
    if operation == "store" and options.reply is not None:
        level, signature, coercion = options.reply[0], options.reply[2], options.reply[4]
        coerce = "no coercion" if coercion == 0 else "may coerce"
        return (f"Level of support {level} (Full), signature level {signature}, {coerce}",)
    agreed = [
        name
        for name, on in (
            ("relational-queries" if operation == "find" else "relational-retrieval",
             options.relational),
            ("combined date-time matching", options.combined_date_time),
            ("fuzzy semantic matching of person names", options.fuzzy_person_names),
            ("timezone query adjustment", options.timezone_adjustment),
        )
        if on
    ]  # fmt: skip
    return tuple(agreed) or ("None",)


def _network(settings: Settings) -> list[Section]:
    network, tls = settings.network, settings.network.tls
    rows: list[tuple[str, Line]] = [("Physical network", "TCP/IP (IPv4 and IPv6)")]
    if network.listen_plain:
        rows.append(("DICOM port", f"{network.host}:{network.port}"))
    if tls.enabled:
        rows.append(("DICOM TLS port", f"{network.host}:{tls.port}"))
    if settings.http.enabled:
        rows.append(("HTTP port", f"{settings.http.host}:{settings.http.port}"))
    rows.append(("Worker processes", str(network.workers)))
    table = Table("Network interfaces", ("Interface", "Value"), _pairs(rows))
    return [Section("4.3", "Network Interfaces", (table,))]


def _configuration(settings: Settings) -> list[Section]:
    peers = tuple(
        (
            (peer.ae_title,),
            (f"{peer.host}:{peer.port}",),
            ("Yes" if peer.tls else "No",),
            (peer.description,),
        )
        for peer in settings.peers
    ) or ((("(none)",), ("",), ("",), ("",)),)
    peer_table = Table("Remote AEs (peers)", ("AE title", "Address", "TLS", "Description"), peers)
    return [
        Section("4.4", "Configuration"),
        Section(
            "4.4.1",
            "AE Title / Presentation Address Mapping",
            (
                f"Local AE title: {settings.ae_title}. Called AE titles are not checked unless "
                "a rule's match names them. C-MOVE destinations and report receivers are found "
                "by AE title in the peers table.",
                peer_table,
            ),
        ),
    ]


def _character_sets() -> Section:
    terms = sorted(term for term in python_encoding if term)
    return Section(
        "6",
        "Support of Character Sets",
        (
            "Identifiers and stored attributes are decoded with the Specific Character Set "
            "(0008,0005) they carry, from any of the defined terms below (default ISO_IR 6), "
            "and matched as Unicode. A C-FIND response is encoded in the request's character "
            "set when it can hold every value, else in ISO_IR 192 (UTF-8).",
            Bullets(tuple(terms)),
        ),
    )


def _security(settings: Settings, policy: Policy) -> list[Section]:
    tls = settings.network.tls
    if tls.enabled:
        suites = "TLS 1.3 only" if tls.min_version == "1.3" else "TLS 1.2 and 1.3"
        clients = tls.client_certificates.value
        transport = (
            f"DICOM TLS on port {tls.port}: {suites}, the BCP 195 (RFC 9325) recommended "
            f"AEAD suites with forward secrecy (PS3.15 Annex B); client certificates {clients}."
        )
    else:
        transport = "DICOM TLS is not enabled (network.tls.enabled false)."
    return [
        Section("7", "Security"),
        Section("7.1", "Security Profiles", (transport, _identity_table(policy.identity))),
        Section(
            "7.2",
            "Audit Trail",
            (
                "Security and data events are written as PS3.15 A.5 audit messages"
                + (" (syslog too)." if settings.audit.syslog else ".")
                if settings.audit.enabled
                else "The audit trail is disabled.",
            ),
        ),
    ]


def _identity_table(identity: IdentityVerifier) -> Table:
    """User identity negotiation (PS3.7 D.3.3.7): the types the verifier can check."""
    users, jwt = bool(identity.users), identity.jwt is not None
    rows = [
        ("1 Username", users, "Basic User Identity Association Profile"),
        ("2 Username and passcode", users, "User Identity plus Passcode Association Profile"),
        ("3 Kerberos", False, ""),
        ("4 SAML", False, ""),
        ("5 JSON Web Token", jwt, "signature and expiry verified"),
    ]
    cells = tuple(
        ((kind,), ("Yes" if on else "No",), (note if on else "",)) for kind, on, note in rows
    )
    return Table("User identity types", ("Type", "Verified", "Note"), cells)


# Rendering -----------------------------------------------------------------------------------

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|#])")
CSS = (
    "body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;"
    "color:#222}table{border-collapse:collapse;margin:1rem 0}caption{font-weight:600;"
    "text-align:left;padding:.3rem 0}th,td{border:1px solid #bbb;padding:.25rem .5rem;"
    "vertical-align:top;text-align:left}th{background:#eee}code{font-size:.9em}"
)


def _md_text(text: str) -> str:
    escaped = html.escape(text, quote=False)  # raw HTML in Markdown would be markup
    return _MARKDOWN_SPECIAL.sub(r"\\\1", escaped)


def _md_line(line: Line) -> str:
    return f"`{line.text.replace('`', '')}`" if isinstance(line, Code) else _md_text(line)


def render_markdown(document: Document) -> str:
    """The statement as GitHub-flavoured Markdown."""
    out = [f"# {_md_text(document.title)}", ""]
    for section in document.sections:
        level = "#" * min(section.number.count(".") + 2, 6)
        out += [f"{level} {section.number} {_md_text(section.title)}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                out += [f"*Table: {_md_text(block.caption)}*", ""]
                out.append("| " + " | ".join(map(_md_text, block.columns)) + " |")
                out.append("|" + "---|" * len(block.columns))
                for row in block.rows:
                    cells = ("<br>".join(map(_md_line, cell)) for cell in row)
                    out.append("| " + " | ".join(cells) + " |")
            elif isinstance(block, Bullets):
                out += [f"- {_md_text(item)}" for item in block.items]
            else:
                out.append(_md_text(block))
            out.append("")
    return "\n".join(out)


def _html_line(line: Line) -> str:
    if isinstance(line, Code):
        return f"<code>{html.escape(line.text)}</code>"
    return html.escape(line)


def render_html(document: Document) -> str:
    """The statement as one self-contained HTML page."""
    title = html.escape(document.title)
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{title}</title><style>{CSS}</style></head><body>",
        f"<h1>{title}</h1>",
    ]
    for section in document.sections:
        level = min(section.number.count(".") + 2, 6)
        anchor = "s" + section.number.replace(".", "-")
        heading = f"{section.number} {html.escape(section.title)}"
        out.append(f'<h{level} id="{anchor}">{heading}</h{level}>')
        for block in section.blocks:
            if isinstance(block, Table):
                out.append(f"<table><caption>{html.escape(block.caption)}</caption><tr>")
                out.append("".join(f"<th>{html.escape(c)}</th>" for c in block.columns) + "</tr>")
                for row in block.rows:
                    cells = ("<br>".join(map(_html_line, cell)) for cell in row)
                    out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
                out.append("</table>")
            elif isinstance(block, Bullets):
                items = "".join(f"<li>{html.escape(item)}</li>" for item in block.items)
                out.append(f"<ul>{items}</ul>")
            else:
                out.append(f"<p>{html.escape(block)}</p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def render(document: Document, output_format: str) -> str:
    """`document` as "markdown" or "html"."""
    return render_html(document) if output_format == "html" else render_markdown(document)

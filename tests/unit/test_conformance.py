"""The conformance statement's model and renderings (pacsd/conformance.py), without a server."""

from __future__ import annotations

from pacsd.conformance import PRIVATE_ROW, accepted_contexts, build, render_html, render_markdown
from pacsd.policy.engine import Policy
from pacsd.settings import Settings

HOSTILE = "<script>alert(1)</script>"


def _settings(**values: object) -> Settings:
    return Settings.model_validate(values)


def test_configured_text_is_escaped_in_html_and_markdown() -> None:
    """A peer description and a rule name holding markup come out as text, never as tags."""
    settings = _settings(
        peers=[{"ae_title": "VIEWER", "host": "127.0.0.1", "port": 104, "description": HOSTILE}],
        policies=[{"name": f"rule {HOSTILE}", "sop_classes": ["verification"]}],
    )
    document = build(settings)
    page = render_html(document)
    markdown = render_markdown(document)
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>" not in markdown  # Markdown passes raw HTML through: entities instead
    assert "&lt;script&gt;" in markdown


def test_markdown_table_cells_cannot_break_the_table() -> None:
    """A pipe in a configured text is escaped, so a row keeps its columns."""
    settings = _settings(
        peers=[{"ae_title": "PIPE", "host": "127.0.0.1", "port": 104, "description": "a | b"}]
    )
    row = next(line for line in render_markdown(build(settings)).splitlines() if "PIPE" in line)
    assert "a \\| b" in row


def test_restrictive_rule_lists_only_what_it_grants() -> None:
    """CT storage in Explicit VR Little Endian only: the storage context offers that syntax
    alone, Verification its two uncompressed syntaxes, and nothing else is listed."""
    settings = _settings(
        policies=[
            {
                "name": "ct",
                "sop_classes": ["verification", "CTImageStorage"],
                "transfer_syntaxes": ["ExplicitVRLittleEndian"],
            }
        ]
    )
    accepted = accepted_contexts(Policy.compile(settings.policies))
    assert set(accepted) == {"1.2.840.10008.1.1", "1.2.840.10008.5.1.4.1.1.2"}
    assert accepted["1.2.840.10008.5.1.4.1.1.2"].syntaxes == ["1.2.840.10008.1.2.1"]
    assert accepted["1.2.840.10008.1.1"].syntaxes == ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
    markdown = render_markdown(build(settings))
    assert "`1.2.840.10008.5.1.4.1.1.4`" not in markdown  # MR Image Storage: not granted
    assert "`1.2.840.10008.1.2.4.90`" not in markdown  # JPEG 2000 Lossless: not granted


def test_default_policy_accepts_private_storage_and_drops_unserved_classes() -> None:
    """The default rule's `storage` covers private SOP classes; Print Job (granted by the
    `print` group but not served, negotiation._NOT_SERVED) is not listed."""
    accepted = accepted_contexts(Policy.compile(Settings().policies))
    assert PRIVATE_ROW in accepted
    assert "1.2.840.10008.5.1.1.14" not in accepted
    assert accepted["1.2.840.10008.5.1.4.1.1.2"].peer_scp  # peer_scp_role: storage

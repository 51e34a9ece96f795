"""The mailbox provider of an event: by the MX host that answered, else the recipient domain."""

from __future__ import annotations

import pytest

from policies.providers import OTHER, PROVIDERS, provider_of, provider_of_mx


@pytest.mark.parametrize(
    ("destination", "provider"),
    [
        # Google: Gmail and Workspace, old and new MX sets, the relay's host:port form
        ("gmail-smtp-in.l.google.com:25", "google"),
        ("alt3.aspmx.l.google.com:25", "google"),
        ("smtp.google.com:25", "google"),
        ("aspmx2.googlemail.com:25", "google"),
        # Microsoft 365 tenants (a custom domain), Outlook.com, the DNSSEC zone, NDR hosts
        ("example-com.mail.protection.outlook.com:25", "microsoft"),
        ("hotmail-com.olc.protection.outlook.com:25", "microsoft"),
        ("contoso-com.l-v1.mx.microsoft:25", "microsoft"),
        ("DM6PR11MB4545.namprd11.prod.outlook.com", "microsoft"),  # a DSN's Remote-MTA
        ("mta7.am0.yahoodns.net:25", "yahoo"),
        ("mx-aol.mail.gm0.yahoodns.net:25", "yahoo"),
        ("mx01.mail.icloud.com:25", "apple"),
        ("mx2.zoho.eu:25", "zoho"),
        ("in1-smtp.messagingengine.com:25", "fastmail"),
        ("mailsec.protonmail.ch:25", "proton"),
        ("mx00.gmx.net:25", "gmx"),
        ("mx-ha03.web.de:25", "gmx"),
        ("mx00.kundenserver.de:25", "ionos"),
        ("mxs.mail.ru:25", "mailru"),
        ("mx.yandex.net:25", "yandex"),
        ("mxbiz1.qq.com:25", "tencent"),
        ("163mx01.mxmail.netease.com:25", "netease"),
        ("mx0a-00123401.pphosted.com:25", "proofpoint"),
        ("us-smtp-inbound-1.mimecast.com:25", "mimecast"),
        ("d123456.ess.barracudanetworks.com:25", "barracuda"),
        ("mx1.example.iphmx.com:25", "cisco"),
        # case, a final dot, no port
        ("ASPMX.L.GOOGLE.COM.:25", "google"),
        ("mx01.mail.icloud.com", "apple"),
    ],
)
def test_the_answering_mx_host_names_the_provider(destination, provider):
    """Custom domains hosted by a provider land in its group: the domain is unknown, the MX
    host says it."""
    assert provider_of(destination, "example-company.com") == provider
    assert provider_of_mx(destination) == provider


@pytest.mark.parametrize(
    "destination",
    [
        "mx.example.com:25",
        "127.0.0.1:2525",
        "[2001:db8::25]:25",
        "2001:db8::25",  # a Remote-MTA written without brackets
        "evil-google.com:25",  # a label that merely ends like one
        "google.com.evil.example:25",
        "gmail.com.example:25",
        "localhost:25",
        "",
    ],
)
def test_hosts_of_no_known_provider(destination):
    assert provider_of_mx(destination) is None
    assert provider_of(destination, "example-company.com") == OTHER


def test_whole_labels_tell_mail_com_from_gmail_com():
    assert provider_of_mx("mx00.mail.com:25") == "gmx"
    assert provider_of_mx("mx.gmail.com:25") is None  # no MX of Google's is named so


@pytest.mark.parametrize(
    ("domain", "provider"),
    [
        ("gmail.com", "google"),
        ("Hotmail.co.uk", "microsoft"),
        ("aol.com", "yahoo"),
        ("me.com", "apple"),
        ("web.de", "gmx"),
        ("qq.com", "tencent"),
        ("example-company.com", OTHER),
        ("mail.gmail.com", OTHER),  # domains match whole, not by suffix
        ("", OTHER),
    ],
)
def test_without_an_mx_host_the_recipient_domain_decides(domain, provider):
    """A DNS failure (no destination) or a smarthost route (its host names no provider)."""
    assert provider_of(None, domain) == provider
    assert provider_of("smarthost.example.net:587", domain) == provider


def test_the_mx_host_wins_over_the_domain():
    """gmail.com's mail through a gateway named in its MX would be the gateway's; a domain
    that moved to Microsoft is Microsoft's."""
    assert provider_of("example-com.mail.protection.outlook.com:25", "gmail.com") == "microsoft"


def test_every_provider_has_a_distinct_name_and_suffixes_belong_to_one():
    names = [p.name for p in PROVIDERS]
    assert len(names) == len(set(names))
    assert OTHER not in names
    suffixes = [s for p in PROVIDERS for s in p.mx_suffixes]
    assert len(suffixes) == len(set(suffixes))
    domains = [d for p in PROVIDERS for d in p.domains]
    assert len(domains) == len(set(domains))

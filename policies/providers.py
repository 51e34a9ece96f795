"""Which mailbox provider a recipient's mail went to, for the bounces report's
``--group-by provider``.

The MX host that answered says it best: a company's own domain hosted by Google Workspace
or Microsoft 365 has its MX at Google or Microsoft, so its mail lands in their group however
the domain is spelled. When there is no answering host (the DNS lookup failed, no route) or
it names no known provider (a smarthost route, the recipient's own server), the recipient's
domain is asked instead: gmail.com is Google's whatever carried the mail. Otherwise
``other``.

Each provider is listed with the MX host suffixes it is known by (matched on whole labels:
``l.google.com`` matches ``alt1.aspmx.l.google.com``, never ``evil-google.com``) and its own
consumer domains. Security gateways in front of many companies' mailboxes (Proofpoint,
Mimecast, Barracuda, Cisco) are providers of their own here: they are who answered, and
their refusals read alike whoever is behind them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["OTHER", "PROVIDERS", "Provider", "provider_of", "provider_of_mx"]

OTHER = "other"


@dataclass(frozen=True)
class Provider:
    name: str
    mx_suffixes: tuple[str, ...]  # MX host names end in one of these (whole labels)
    domains: tuple[str, ...] = ()  # its own recipient domains, for mail with no MX host


PROVIDERS: tuple[Provider, ...] = (
    # Gmail and Google Workspace: smtp.google.com since 2023, the (alt1-4.)aspmx.l.google.com
    # set before, gmail-smtp-in.l.google.com for gmail.com; aspmx2-5.googlemail.com in old
    # setups (support.google.com/a/answer/174125).
    Provider(
        "google", ("google.com", "googlemail.com"), ("gmail.com", "googlemail.com", "google.com")
    ),
    # Microsoft 365 / Exchange Online: <domain>.mail.protection.outlook.com, and for domains
    # added from 2024 on <domain>.<zone>.mx.microsoft (DNSSEC; message center MC1048624);
    # Outlook.com consumer mail: <domain>.olc.protection.outlook.com, older mx*.hotmail.com.
    Provider(
        "microsoft",
        ("outlook.com", "mx.microsoft", "hotmail.com"),
        (
            "outlook.com",
            "hotmail.com",
            "live.com",
            "msn.com",
            "hotmail.co.uk",
            "hotmail.fr",
            "hotmail.de",
            "hotmail.it",
            "hotmail.es",
            "live.co.uk",
            "live.fr",
            "outlook.fr",
            "outlook.de",
        ),
    ),
    # Yahoo Mail (mta5-7.am0.yahoodns.net) and AOL, which Yahoo runs
    # (mx-aol.mail.gm0.yahoodns.net): one infrastructure, one postmaster.
    Provider(
        "yahoo",
        ("yahoodns.net", "yahoo.com", "aol.com"),
        (
            "yahoo.com",
            "ymail.com",
            "rocketmail.com",
            "yahoo.co.uk",
            "yahoo.fr",
            "yahoo.de",
            "yahoo.it",
            "yahoo.es",
            "yahoo.ca",
            "yahoo.com.au",
            "yahoo.co.in",
            "aol.com",
            "aim.com",
        ),
    ),
    # iCloud Mail and iCloud+ custom domains: mx01/mx02.mail.icloud.com
    # (support.apple.com/HT212514).
    Provider("apple", ("icloud.com", "me.com"), ("icloud.com", "me.com", "mac.com")),
    # Zoho Mail by data centre: mx.zoho.com, mx.zoho.eu, mx.zoho.in, mx.zoho.com.au, ...
    Provider(
        "zoho",
        ("zoho.com", "zoho.eu", "zoho.in", "zoho.com.au", "zoho.jp", "zohomail.com"),
        ("zoho.com", "zohomail.com"),
    ),
    # Fastmail: in1-smtp/in2-smtp.messagingengine.com.
    Provider("fastmail", ("messagingengine.com",), ("fastmail.com", "fastmail.fm")),
    # Proton Mail: mail.protonmail.ch, mailsec.protonmail.ch (proton.me/support/custom-domain).
    Provider("proton", ("protonmail.ch",), ("proton.me", "protonmail.com", "pm.me")),
    # United Internet's free mail: GMX (mx00.gmx.net), WEB.DE (mx-ha03.web.de), mail.com.
    Provider(
        "gmx",
        ("gmx.net", "web.de", "mail.com"),
        ("gmx.net", "gmx.de", "gmx.com", "gmx.at", "gmx.ch", "web.de", "mail.com"),
    ),
    # United Internet's hosting, IONOS (formerly 1&1): mx00.ionos.de, mx00.kundenserver.de,
    # mx01.1and1.com, mx01.perfora.net.
    Provider("ionos", ("ionos.de", "ionos.com", "kundenserver.de", "1and1.com", "perfora.net")),
    # Mail.ru / VK WorkSpace: mxs.mail.ru, emx.mail.ru.
    Provider("mailru", ("mail.ru",), ("mail.ru", "inbox.ru", "list.ru", "bk.ru")),
    # Yandex Mail and Yandex 360: mx.yandex.ru, mx.yandex.net.
    Provider("yandex", ("yandex.ru", "yandex.net"), ("yandex.ru", "yandex.com", "ya.ru")),
    # Tencent: QQ Mail (mx1-3.qq.com) and Tencent Exmail for companies (mxbiz1.qq.com).
    Provider("tencent", ("qq.com",), ("qq.com", "foxmail.com")),
    # NetEase: 163mx00.mxmail.netease.com, 126mx..., qiye163mx... for companies.
    Provider("netease", ("netease.com", "163.com", "126.com"), ("163.com", "126.com", "yeah.net")),
    # Large access providers' own mail.
    Provider("comcast", ("comcast.net",), ("comcast.net",)),
    # AT&T: ff-ip4-mx-vip1.prodigy.net.
    Provider("att", ("prodigy.net", "att.net"), ("att.net", "sbcglobal.net", "bellsouth.net")),
    Provider("orange", ("orange.fr",), ("orange.fr", "wanadoo.fr")),
    Provider("t-online", ("t-online.de",), ("t-online.de",)),
    Provider("free", ("free.fr",), ("free.fr",)),
    Provider("naver", ("naver.com",), ("naver.com",)),
    Provider("seznam", ("seznam.cz",), ("seznam.cz",)),
    # Hosting companies' mail: GoDaddy (mailstore1.secureserver.net), Rackspace
    # (mx1.emailsrvr.com), OVHcloud (mx1.mail.ovh.net).
    Provider("godaddy", ("secureserver.net",)),
    Provider("rackspace", ("emailsrvr.com",)),
    Provider("ovh", ("ovh.net",)),
    # Security gateways in front of companies' mailboxes: Proofpoint
    # (mx0a-<id>.pphosted.com; Essentials mx1-us1.ppe-hosted.com), Mimecast
    # (us-smtp-inbound-1.mimecast.com, ...), Barracuda (<id>.ess.barracudanetworks.com),
    # Cisco Secure Email Cloud, once IronPort (<id>.iphmx.com).
    Provider("proofpoint", ("pphosted.com", "ppe-hosted.com")),
    Provider("mimecast", ("mimecast.com", "mimecast.co.za", "mimecast-offshore.com")),
    Provider("barracuda", ("barracudanetworks.com",)),
    Provider("cisco", ("iphmx.com",)),
)

_BY_MX_SUFFIX = {suffix: p.name for p in PROVIDERS for suffix in p.mx_suffixes}
_BY_DOMAIN = {domain: p.name for p in PROVIDERS for domain in p.domains}


def _host(destination: str) -> str:
    """The host name of an event's destination: ``host:port`` (the relay's own),
    ``[v6]:port``, or a bare host (a bounce message's Remote-MTA); lower case, no final dot."""
    text = destination.strip().lower()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else text[1:]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    return text.rstrip(".")


def provider_of_mx(destination: str | None) -> str | None:
    """The provider whose MX host answered (``destination`` as events record it), or None
    when there was none or it is no known provider's."""
    if not destination:
        return None
    labels = _host(destination).split(".")
    # The longest known suffix first: whole labels, so "mail.com" is not "gmail.com"'s end.
    for start in range(len(labels) - 1):
        found = _BY_MX_SUFFIX.get(".".join(labels[start:]))
        if found is not None:
            return found
    return None


def provider_of(destination: str | None, recipient_domain: str | None) -> str:
    """The recipient's mailbox provider: by the MX host that answered, else by the recipient
    domain's own, else ``other``."""
    by_mx = provider_of_mx(destination)
    if by_mx is not None:
        return by_mx
    domain = (recipient_domain or "").strip().lower().rstrip(".")
    return _BY_DOMAIN.get(domain, OTHER)

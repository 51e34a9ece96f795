"""Codes that vendors publish, read before a reply's words because their
meaning is more precise than the words around them.

* ``vendor_category``: Microsoft's X.7.xxx details (Exchange Online's NDR
  table, even when worded "Server busy" or "Access denied"), Spectrum's
  ``AUP#I-1310``, NetEase's return fields ("421 HL:ICC"), AOL's ``RTR:`` /
  ``RLY:`` blocks, Cox's ``AUP#CXBL``; each table below says where it is
  published.
* The marks of a vendor's documented refusal of a recipient its directory does
  not hold (Exchange Online's Directory-Based Edge Blocking, Cisco IronPort's
  LDAP accept query): ``directory_mark`` says which mark a reply carries;
  whether that proves the recipient gone is ``policies.classify``'s
  "Evidence".
"""

from __future__ import annotations

import re
from enum import Enum

from policies.categories import Category

__all__ = ["DirectoryMark", "directory_mark", "vendor_category", "without_dbeb_wording"]


class DirectoryMark(Enum):
    """The vendor whose own mark is on a refusal of a recipient its directory does not hold."""

    EXCHANGE_ONLINE = "exchange_online"  # DBEB's 5.4.1 with a front end's stamp
    IRONPORT = "ironport"  # the LDAP accept query's "#5.1.0 Address rejected"


def vendor_category(code: int, status: str | None, words: str) -> Category | None:
    """The category a vendor's published code in the reply gives (``status`` is its
    enhanced code, ``words`` its message), or ``None`` when it carries none."""
    microsoft = _microsoft_category(status)
    if microsoft is not None:
        return microsoft
    match = _SPECTRUM_AUP.search(words)
    if match is not None:
        number = int(match.group(1))
        for low, high, category in _SPECTRUM_RANGES:
            if low <= number <= high:
                return category
        return None
    if code:
        netease = _NETEASE_FIELD.match(words)
        if netease is not None and netease.group(1) in _NETEASE:
            return _NETEASE[netease.group(1)]
    if _AOL_BLOCK.search(words):
        return Category.SPAM_BLOCK_IP
    if _AOL_PACE.search(words):
        return Category.RATE_LIMITED
    cox = _COX_AUP.search(words)
    if cox is not None:
        name = cox.group(1).upper()
        return _COX.get("IPBL" if name.startswith("IPBL") else name)
    return None


def directory_mark(code: int, status: str | None, words: str, text: str) -> DirectoryMark | None:
    """The vendor mark of a directory refusal the reply carries: ``status`` is its
    enhanced code, ``words`` its message, ``text`` the reply as sent (where the
    stamps and notations are)."""
    if status == "5.4.1" and _DBEB.search(words) and _EXCHANGE_ONLINE_STAMP.search(text):
        return DirectoryMark.EXCHANGE_ONLINE
    if code == 550 and _IRONPORT_LDAP_ACCEPT.search(text):
        return DirectoryMark.IRONPORT
    return None


def without_dbeb_wording(words: str) -> str:
    """``words`` without DBEB's own refusal ("Recipient address rejected: Access
    denied"), so that what is left can be read for another fault."""
    return _DBEB.sub("", words)


# Spectrum/Charter publish their "AUP#I-nnnn" / "AUP#O-nnnn" codes
# (spectrum.net "understanding email error codes"); the words around them
# ("sender rejected") do not say which it is.
_SPECTRUM_AUP = re.compile(r"AUP#(?:In?|O)-?(\d{4})\b", re.IGNORECASE)
_SPECTRUM_RANGES: tuple[tuple[int, int, Category], ...] = (
    (1000, 1000, Category.SPAM_BLOCK_IP),  # IP blocked for suspicious activity
    (1010, 1080, Category.POLICY_AUTH),  # sending account blocked / limited
    (1090, 1090, Category.SERVICE_UNAVAILABLE),  # cannot be processed, try later
    (1100, 1150, Category.POLICY_AUTH),  # no full-circle reverse DNS
    (1160, 1190, Category.POLICY_AUTH),  # against the sending domain's policy
    (1200, 1250, Category.SPAM_BLOCK_IP),  # Cloudmark / Spamhaus listing
    (1300, 1340, Category.RATE_LIMITED),  # too many (concurrent) connections
    (1350, 1490, Category.RATE_LIMITED),  # volume limits
    (1500, 1520, Category.POLICY_AUTH),  # sending as someone else
    (1530, 1530, Category.MESSAGE_TOO_LARGE),
    (1540, 1540, Category.RATE_LIMITED),  # too many messages in one session
    (1550, 1550, Category.TOO_MANY_RECIPIENTS),
    (1580, 1580, Category.RATE_LIMITED),  # too many recipients in a short time
)

# NetEase (163.com, 126.com, yeah.net, qiye.163.com) answers with a short
# return field after the code ("421 HL:ICC") and publishes what each means
# (help.163.com "退信代码说明"); the field is all the reply says.
_NETEASE_FIELD = re.compile(r"^([A-Z]{2}:[A-Z]{3})\b")
_NETEASE: dict[str, Category] = {
    "HL:REP": Category.SPAM_BLOCK_IP,  # IP sends to many non-existent recipients
    "HL:MEP": Category.SPAM_BLOCK_IP,  # IP forges many sender domains
    "HL:ODP": Category.SPAM_BLOCK_IP,
    "HL:IHU": Category.SPAM_BLOCK_IP,  # IP suspended for spam or odd connections
    "HL:IPB": Category.SPAM_BLOCK_IP,  # IP not on the allowed sending list
    "WM:BLI": Category.SPAM_BLOCK_IP,
    "DT:RBL": Category.SPAM_BLOCK_IP,  # IP on one or more RBLs
    "HL:ICC": Category.RATE_LIMITED,  # too many concurrent connections from the IP
    "HL:IFC": Category.RATE_LIMITED,  # too much mail from the IP in a short time
    "MI:DMC": Category.RATE_LIMITED,  # too many messages in this connection
    "MI:SFQ": Category.RATE_LIMITED,  # sender over its 15-minute quota
    "MI:STC": Category.RATE_LIMITED,  # sender over its daily connection count
    "RP:QRC": Category.RATE_LIMITED,  # sender over its short-term recipient count
    "RP:TRC": Category.RATE_LIMITED,  # sender over its daily recipient count
    "RP:DRC": Category.TOO_MANY_RECIPIENTS,  # too many recipients in this connection
    "RP:RCL": Category.TOO_MANY_RECIPIENTS,  # too many recipients in one message
    "WM:BLU": Category.POLICY_AUTH,  # sender not on the allowed sender list
    "MI:SPB": Category.POLICY_AUTH,
    "MI:SPF": Category.POLICY_AUTH,
    "MI:DMA": Category.POLICY_AUTH,
    "DT:SUM": Category.POLICY_AUTH,  # envelope and header senders differ
    "DT:SPM": Category.CONTENT_REJECTED,  # spam-like content
    "RP:FRL": Category.RELAY_DENIED,  # no open relay
    "MI:CEL": Category.OTHER,  # too many erroneous commands
    "MI:CCL": Category.OTHER,  # more commands than normal
    "RP:CEL": Category.OTHER,
    "RP:CCL": Category.OTHER,
    "MI:NHD": Category.OTHER,  # empty HELO
    "MI:IMF": Category.OTHER,  # malformed sender address
}
# AOL's postmaster pages file its block codes by the part before the colon:
# RTR (reputation, dynamic and unallocated IPs, rDNS), RLY (complaint blocks),
# HVU, DYN and DNS (the sending IP's DNS) all block the sending IP; CON is a
# connection threshold.
_AOL_BLOCK = re.compile(r"\b(?:RTR|RLY|HVU|DYN|DNS):[A-Z0-9]{2}\b")
_AOL_PACE = re.compile(r"\bCON:[A-Z0-9]{2}\b")
# Cox's published AUP# codes (postmaster.cox.net "Error Codes").
_COX_AUP = re.compile(r"AUP#(CX[A-Z]+|CDRBL|IPBL\d*)\b", re.IGNORECASE)
_COX: dict[str, Category] = {
    "CXBL": Category.SPAM_BLOCK_IP,  # IP blocked for spam-like behaviour
    "CDRBL": Category.SPAM_BLOCK_IP,  # IP temporarily blocked
    "IPBL": Category.SPAM_BLOCK_IP,  # IP on a DNSBL (IPBL0001 ... IPBL1111)
    "CXCNCT": Category.RATE_LIMITED,  # too many connections
    "CXMXRT": Category.RATE_LIMITED,  # too many messages
    "CXSNDR": Category.POLICY_AUTH,  # sender domain fails DNS or authentication
    "CXMJ": Category.POLICY_AUTH,  # sending account blocked
    "CXDNS": Category.POLICY_AUTH,
}


# Exchange Online's Directory-Based Edge Blocking: the recipient is not in the tenant's
# directory (Microsoft Learn, "Email non-delivery reports in Exchange Online", 5.4.1).
# Its front ends stamp the reply "[NAME.region.prod.outlook.com ...]" or
# "[NAME.prod.protection.outlook.com]"; a gateway repeating the words drops the stamp.
_DBEB = re.compile(r"recipient address rejected: access denied", re.IGNORECASE)
_EXCHANGE_ONLINE_STAMP = re.compile(r"\.prod\.(?:protection\.)?outlook\.com\b", re.IGNORECASE)
# Cisco IronPort's refusal of a recipient its LDAP accept query does not find: its
# default text, with the enhanced code in IronPort's own "#5.1.0" notation.
_IRONPORT_LDAP_ACCEPT = re.compile(r"(?:^|\s)#5\.1\.0 Address rejected\.?\s*$")


# Microsoft's X.7.5xx/7xx details (Exchange Online's NDR table) name the cause
# where the words say only "Access denied"; 4.7.5xx-6xx is throttling even
# when worded "Server busy", 4.7.850-899 a temporary restriction of the IP.
_MICROSOFT_PERMANENT: dict[int, Category] = {
    501: Category.POLICY_AUTH,  # sending account banned for spam
    502: Category.POLICY_AUTH,
    503: Category.POLICY_AUTH,
    506: Category.OTHER,  # bad HELO (the client named itself as the server)
    507: Category.SPAM_BLOCK_IP,  # the recipient's organisation blocked the IP
    508: Category.RATE_LIMITED,  # the IPv6 range sent too much too fast
    509: Category.POLICY_AUTH,  # DMARC
    510: Category.POLICY_AUTH,  # the recipient takes no mail over IPv6
    511: Category.SPAM_BLOCK_IP,  # banned sending IP
    512: Category.CONTENT_REJECTED,  # no valid From: header
    513: Category.SPAM_BLOCK_IP,  # the recipient domain's block list
    515: Category.POLICY_AUTH,  # authentication level of the sending domain
    708: Category.SPAM_BLOCK_IP,  # traffic not accepted from this IP
}


def _microsoft_category(enhanced: str | None) -> Category | None:
    if enhanced is None or enhanced[2:4] != "7.":
        return None
    number = int(enhanced[4:])
    if enhanced[0] == "4":
        if 500 <= number <= 699:
            return Category.RATE_LIMITED
        if 850 <= number <= 899:
            return Category.SPAM_BLOCK_IP
        return None
    if number in _MICROSOFT_PERMANENT:
        return _MICROSOFT_PERMANENT[number]
    if 321 <= number <= 323:
        return Category.TLS_REQUIRED  # STARTTLS, certificate, DANE of the destination
    if 606 <= number <= 649:
        return Category.SPAM_BLOCK_IP  # banned sending IP
    if 700 <= number <= 750:
        return Category.POLICY_AUTH  # the sending tenant is banned or unprovisioned
    return None

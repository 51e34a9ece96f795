"""Bounce-text templates: one row in the bounces report per provider reply.

The bounces report groups bounces by the template of their bounce text: the
provider's reply with what changes from one bounce to the next masked or
dropped, so that one provider's same reply is one row however many ids,
hosts, timestamps or recipients it carried, and however a gateway, a bounce
format or a corpus decorated it; and two different replies are two rows.
``template_of(text)`` runs once per bounce event, on the hot path: every
pattern is compiled once and the words are masked in one regex pass (about
25 µs a reply on the test corpus, 50 for Gmail's four-line ones, 200 for a
700-character Exchange dump).

What a template is
==================

The reply's words, as the provider wrote them, after four steps:

1. *read*: reply code and enhanced code (RFC 3463) as ``policies.smtp_reply``
   reads them, continuation prefixes ("550-5.1.1 ") dropped from every line,
   Postfix-joined or not, whitespace collapsed;
2. *mask* every variable value by its shape (table below);
3. *drop* what decorates a reply rather than says it: session stamps at the
   edges (below), the recipient echoed in front ("<a@b>:", "[a@b]:",
   "<a@b>...", or an empty ": "), Yahoo's "delivery error: dd" and a
   sub-code after the reply code ("554 30 Sorry"), an "Error:" label, a code
   quoted again at the start, a CamelCase tag at the end ("(UserSearch)"),
   the final punctuation; the first word is capitalised and "overquota" is
   "over quota". An address *in* the sentence stays ("<email> is no longer
   valid");
4. *families*: where one provider words one reply several ways (Gmail's
   rewordings and Temp/Perm topics, Postfix's table names, a resolver's
   answer), the family's template (``policies.template_families``), found by
   the provider's stable identifier (a help topic, a status name, Gmail's
   signature), never by words another server may say too.

The template groups; it is not what a report row shows. A row shows
``wording_of`` one of its replies: the same steps without the families, so
an operator reads words that a reply in the row actually had.

The codes are not in the template. The same reply comes as 550 and as 450
(Postfix's ``soft_bounce``, Sendmail's full mailbox), with an enhanced code
or without, or with another one (La Poste's 5.5.0 and 5.7.1): the words are
the reply, and a bounce record keeps its codes in their own columns. Only a
reply that is nothing but an RFC 5321 stock text ("Requested action not
taken: mailbox unavailable") keeps its codes in front ("550 5.1.1 ..."):
those words say nothing of who sent them, the codes do. So does a reply
without words.

Masks
=====

========================  ==========  =========================================
shape                     becomes     notes
========================  ==========  =========================================
URL                       kept        scheme, host and path name the help page
                                      (host lowercased, a lone "/" dropped)
                          <url>       only when "<...>" is glued into it
address                   <email>     "<a@b>" too, brackets included
date / time               <date>      ISO 8601, "2023/11/23 18:59:46 GMT",
                                      RFC 5322, ctime, bare "hh:mm:ss"
IPv4, IPv6                <ip>        also redacted "x.xx.xx.xx", "#.#.#.#"
DNS name                  <domain>    last label letters of one case, masked
                                      whole (front ends differ in letters)
token mixing letters      <id>        queue ids, "y3si675602plr.1", base64 and
and digits in one run                 hex blobs, vendor tags "(S843)"
vendor reason tag         OFR_<n>     "OFR_416", "OFR005_505", "ofr_506": the
                                      letters name the provider and stay
number                    <n>         counts, sizes, ports; a unit glued to it
                                      stays: "<n>MB"
DNS record type           <type>      after "type=", "record type", "DNS type"
                                      (a family: one failure, whichever record)
========================  ==========  =========================================

Not masked: enhanced codes and RFC numbers in the text, a reply code quoted
from another server ("said: 550 ..."), words that carry a digit by nature
("IPv6", "8-bit", "AP-NORTHEAST-1", "AUP#In-1310"), and tokens of letters
only, however random they look (that would need a dictionary).

A URL keeps a query value that is a word or a short number (the topic:
Gmail's ``?p=NoSuchUser``) and masks one shaped like a per-message value (an
IP, an address, a date, ten or more digits, an opaque token of twelve or
more characters mixing letters and digits), and a query value that is a DNS
name (``?domain=news.example`` names a sender or a recipient, not the page);
path segments and the fragment alike, except the DNS name ("lookup.cgi" is a
file). Rewriting gateways are undone first (Proofpoint URL Defense v2 and
v3, Microsoft Safe Links). A moved help page is named by its current host
and a query value naming a reason inside a topic (QQ's ``no=``) is masked:
both lists are in ``template_families``.

Stamps
======

Servers decorate a reply with diagnostics about the session: Gmail's
"[192.0.2.1 12]" and its session id before "- gsmtp", Microsoft's "(S3140)",
"AS(234349959)" and "[<front end> <timestamp> <id>]", Orange's queue id and
role "6FdDrBrGcZfMe ME", Yahoo's "- mta1061.mail.ne1.yahoo.com". Some copies
carry them and some do not, so a stamp is dropped, at the edges only: at the
start (after a reply code), a bracketed group of masked values, "#"
redactions or upper-case tokens of 8+ characters, or a bare ``<id>``; at the
end, such a group, perhaps tagged ("AS(<n>)") or before the final full stop
when parenthesised (a square bracket there ends a sentence: "try again
later from [<ip>]."), an ``<id>`` after the last full stop, "- <domain>",
and the ids before a signature ("- gsmtp"). Inside a sentence the values
stay as placeholders: "messages from [<ip>] weren't sent".

``template_of`` is deterministic and idempotent: a template is its own
template. That is why every mask ends where no word goes on and no "<"
follows, why a URL takes the placeholders inside it along, why a token a
dropped decoration was glued to is masked again, and why the drops and the
families are applied until a round changes nothing.
"""

from __future__ import annotations

import ipaddress
import re
from functools import cache
from urllib.parse import unquote

from policies import template_families as families

__all__ = ["PLACEHOLDERS", "template_of", "wording_of"]

EMAIL = "<email>"
IP = "<ip>"
DATE = "<date>"
DOMAIN = "<domain>"
ID = "<id>"
NUMBER = "<n>"
URL = "<url>"
RECORD_TYPE = "<type>"
PLACEHOLDERS = frozenset({EMAIL, IP, DATE, DOMAIN, ID, NUMBER, URL, RECORD_TYPE})

# --- the reply: code, enhanced code, words -----------------------------------

# The same reading as ``policies.smtp_reply`` (``parse_reply(text).code`` and
# ``.message``; a test holds the two together), with every pattern compiled
# once: ``Reply.message`` alone costs more than this whole function may.
_CODE = re.compile(r"^\s*(?:smtp;\s*)?([1-5]\d\d)(?=[\s-]|$)", re.IGNORECASE)
_ENHANCED = re.compile(r"^\s*#?([245]\.\d{1,3}\.\d{1,3})(?=[\s,;:)\]]|$)")
# A URL broken by a line wrap: "see https: 550 5.1.0 //www..." once the
# continuation prefix is gone reads "https: //www...".
_BROKEN_URL = re.compile(r"\b(https?):\s+//", re.IGNORECASE)


@cache
def _continuations(code: str) -> re.Pattern[str]:
    """Where a Postfix-joined line ("550-5.1.1 a 550 5.1.1 b") splits: before
    the same code, so that a quoted reply ("said: 421 ...") stays whole."""
    return re.compile(rf"\s+(?={code}(?:[ -]|$))")


def _read(text: str) -> tuple[str, str, str]:
    """The reply code, the enhanced code that follows it, and the words of
    every line without those prefixes, whitespace collapsed."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    opening = _CODE.match(text)
    code = opening.group(1) if opening else ""
    pieces: list[str] = []
    for line in text.split("\n"):
        line_code = _CODE.match(line)
        if line_code and line[line_code.end() : line_code.end() + 1] == "-":
            pieces.extend(_continuations(line_code.group(1)).split(line))
        else:
            pieces.append(line)
    enhanced = ""
    words: list[str] = []
    for index, piece in enumerate(pieces):
        rest = piece.strip()
        piece_code = _CODE.match(rest)
        if piece_code and piece_code.group(1) == code:
            rest = rest[piece_code.end() :].lstrip("-").strip()
        piece_enhanced = _ENHANCED.match(rest)
        if piece_enhanced:
            enhanced = enhanced or (piece_enhanced.group(1) if index == 0 else "")
            rest = rest[piece_enhanced.end() :]
        words.append(rest)
    return code, enhanced, " ".join(" ".join(words).split())


# --- the masking pass ----------------------------------------------------------

_MONTH = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]*"
_DAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*"
_ZONE = r"(?:Z|[+-]\d{2}:?\d{2}|(?:GMT|UTC?|[A-Z]{3,4})\b)"
_CLOCK = r"\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?"
_DATE = "|".join(
    (
        # ISO 8601 and its log-file cousins: 2023-01-01T00:00:00.000Z, 2023/11/23 18:59:46 GMT
        rf"\d{{4}}[-/]\d{{2}}[-/]\d{{2}}(?:[T ]{_CLOCK}(?:\s?{_ZONE})?)?",
        # RFC 5322: Fri, 22 Sep 2023 01:01:01 +0000 (UTC)
        rf"(?:{_DAY},?\s+)?\d{{1,2}}\s+{_MONTH}\s+\d{{4}}(?:\s+{_CLOCK}(?:\s+{_ZONE})?)?"
        r"(?:\s+\([A-Z]{2,5}\))?",
        # ctime: Wed Apr  3 16:36:59 JST 2019
        rf"{_DAY}\s+{_MONTH}\s+\d{{1,2}}\s+{_CLOCK}(?:\s+{_ZONE})?\s+\d{{4}}",
        rf"{_CLOCK}(?:\s?{_ZONE})?",
    )
)
_OCTET = r"(?:\d{1,3}|[xX#]{1,3})"
# A URL runs to a space or a quote; a bracketed "<...>" inside it (a
# placeholder after a first pass) is part of it, so that a template is its
# own template.
_URL_CHARS = r"(?:[^\s<>\"]|<[^\s<>\"]*>)"
# A DNS name; "#." is a redacted first label.
_NAME = (
    r"(?:\#\.)?(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}"
    r"(?![\w<-]|\.[A-Za-z0-9])"
)
# A number on its own; one hyphenated to a word is part of a name
# ("AP-NORTHEAST-1", "AUP#In-1310", "8-bit") or of an id ("7-20020a5").
_NUMBER = r"(?<![\w.])(?<![A-Za-z>]-)\d+(?:[.,]\d+)*"
_NUMBER_END = r"(?![\w+/=<]|\.\w|-\w*[A-Za-z]|-<)"
# A unit glued to a number stays: "10MB", "5m", "3rd".
_UNIT = r"(?i:[kmgt]i?b|bytes?|ms|secs?|mins?|hrs?|[kmgtsmhdx]|st|nd|rd|th)"
# A plain word: letters (an apostrophe, a hyphen) up to a space or a
# punctuation mark that ends it. Never masked, and most of a reply.
_WORD = (
    r"(?!RFC\b|(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)\b)[A-Za-z'-]++"
    r"(?=[\s,;!?\"')\]>}]|:(?![/:\w])|\.(?!\w)|$)"
)
# One pass, left to right. Every alternative starts a token, never inside a
# word (nor right after a "<n>", whose unit is not a token), and none starts
# a plain word: the guard in front says so once, so that the alternatives are
# only tried where one of them can match. Each one ends where no word goes on
# and no "<" follows: after one pass a "<" may be a placeholder for what was a
# word, and a template must be its own template.
_MASKS = re.compile(
    rf"(?:(?<!\w)(?:(?=\w)(?<!<n>)(?!{_WORD})|(?=<)|(?=[#:])(?<!>))|(?<=\w)(?=<))(?:"
    + "|".join(
        (
            rf"(?P<url>(?i:https?|ftp)://{_URL_CHARS}+"
            rf"|(?<![\w.@/-])www\.[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+(?:/{_URL_CHARS}*)?)",
            r"(?P<email><[^<>\s@]+@[^<>\s@]+>"
            r"|[\w.+=-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+(?![\w<-]))",
            rf"(?P<date>(?<![\w.:])(?:{_DATE})(?![\w:<]|\.\d))",
            # Kept as they are: enhanced codes in the text, RFC numbers and
            # reply codes quoted from another server.
            r"(?P<keep>(?<![\w.])#?[245]\.\d{1,3}\.\d{1,3}(?![\w<]|\.\d)"
            r"|\bRFC[ .-]?\d{3,5}\b"
            r"|(?<![\w.])[245]\d\d(?=[ -]#?[245]\.\d{1,3}\.\d)"
            r"|(?:(?<=\s[Ss]aid: )|(?<=^[Ss]aid: )|(?<=\.\.\. )|(?<=<))[245]\d\d(?=\s|$))",
            # "::", three colons or an embedded IPv4: "16:36:59" is a time.
            r"(?P<ipv6>(?<![\w:.])(?=[0-9A-Fa-f:]*::|(?:[0-9A-Fa-f]{0,4}:){3}"
            r"|(?:[0-9A-Fa-f]{0,4}:){2,}\d{1,3}\.\d)(?:[0-9A-Fa-f]{1,4}|:)(?::[0-9A-Fa-f]{0,4}){2,7}"
            r"(?:(?<=:)\d{1,3}(?:\.\d{1,3}){3})?(?![\w:<]|\.\d))",
            rf"(?P<ipv4>(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w<]|\.\w))",
            rf"(?P<domain><{_NAME}>|(?<![\w@.-]){_NAME})",
            rf"(?P<number>{_NUMBER}(?P<unit>{_UNIT})?{_NUMBER_END})",
            # A token with letters and digits in one run ("S843", "OFR_416",
            # "y3si675602plr.1"), with whatever it is glued to by - + / = .
            r"(?P<id>(?<![\w+/.-])[\w+/-]*?(?:[A-Za-z]\w*?\d|\d\w*?[A-Za-z])"
            r"(?:[\w+/-]|=+(?=[\w+/])|\.(?=\w))*=*)",
        )
    )
    + ")"
)
# Words with one digit at the end are words, not ids: "IPv6", "POP3".
_DIGIT_WORD = re.compile(r"[A-Za-z]{2,}\d")
# A vendor's reason tag: Orange's "OFR_416" / "OFR005_505", La Poste's
# "LPN001_108". The numbers change, the letters name the provider.
_VENDOR_TAG = re.compile(r"([A-Za-z]{3,5})\d*_\d+")

# --- URLs --------------------------------------------------------------------

_ANGLED = re.compile(r"<[^<>]*>")
_URL_ENDINGS = frozenset(".,;:!?'\")]")
_URL_OPENERS = {")": "(", "]": "["}
_URL_PARTS = re.compile(
    r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)?(?P<host>[^/?#]*)(?P<path>[^?#]*)"
    r"(?:\?(?P<query>[^#]*))?(?:#(?P<fragment>.*))?$",
    re.DOTALL,
)
_URL_START = re.compile(r"(?:https?|ftp)://\w", re.IGNORECASE)
_URLDEFENSE_V3 = re.compile(
    r"^https?://urldefense(?:\.proofpoint)?\.com/v3/__(?P<url>.+?)__(?:;.*)?$",
    re.IGNORECASE | re.DOTALL,
)
_URLDEFENSE_V2 = re.compile(
    r"^https?://urldefense\.proofpoint\.com/v2/url\?(?:.*&)?u=(?P<url>[^&]+)",
    re.IGNORECASE | re.DOTALL,
)
_URLDEFENSE_V2_ESCAPE = re.compile(r"-([0-9A-Fa-f]{2})")
_SAFELINKS = re.compile(
    r"^https?://[\w.-]*safelinks\.protection\.outlook\.com/.*?[?&]url=(?P<url>[^&]+)",
    re.IGNORECASE | re.DOTALL,
)
_QUERY_SEPARATORS = re.compile(r"([&;])")
_ALNUM_RUN = re.compile(r"[A-Za-z0-9_]+")
_EMAIL_VALUE = re.compile(r"[^@\s]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_IPV4_VALUE = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_IPV6_VALUE = re.compile(r"[0-9A-Fa-f:]*:[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*")
_DATE_VALUE = re.compile(_DATE)
_DOMAIN_VALUE = re.compile(_NAME)
_HEX_VALUE = re.compile(r"[0-9A-Fa-f]{16,}")

# --- stamps ------------------------------------------------------------------

_STAMP_ITEM = r"(?:<(?:id|n|ip|date|domain)>|#+|[A-Z0-9]{8,})"
_STAMP_BODY = rf"#?{_STAMP_ITEM}(?:[\s,;:.=/-]*{_STAMP_ITEM})*"
_STAMP = re.compile(rf"\[\s*{_STAMP_BODY}\s*\]|\(\s*{_STAMP_BODY}\s*\)")
# A bare id may carry a two-letter role: Orange's "mwinf5c77 ME".
_LEADING_STAMP = re.compile(rf"(?:{_STAMP.pattern}|<id>(?: [A-Z]{{2}}(?= ))?)(?:\s+|$)")
# Letters that may tag a trailing stamp: Microsoft's "AS(234349959)".
_STAMP_TAG = 4
# A server's signature after the session id: Gmail's "- gsmtp".
_SIGNATURE = re.compile(r"[a-z][a-z0-9]*")

# --- decorations and stock texts ----------------------------------------------

# What may stand in front of the words, repeated: the recipient echoed or an
# empty echo, Yahoo's "delivery error: dd", an "Error:" label, a code quoted
# again ("<a@b>... 550 Host unknown"), read as ``_read`` reads codes: a
# template must not start with what a second reading takes for its code.
_DECORATION = re.compile(
    r"^(?:(?:(?:\[<email>\]|<email>)\s*(?::|\.\.\.)|[:;,]|(?i:delivery error: dd|error:|smtp;)"
    r"|[1-5]\d\d(?=[\s-]|$)-?|#?[245]\.\d{1,3}\.\d{1,3}(?=[\s,;:)\]]|$))\s*)+"
)
# A number right after the reply code is a sub-code: Yahoo's "554 30 Sorry".
_SUB_CODE = re.compile(r"^<n>(?:\s+|$)")
# A one-word CamelCase tag at the end: free.fr's "(UserSearch)".
_TAG = re.compile(r"\s+\([A-Z][a-z]+[A-Z][A-Za-z]*\)$")
# The final punctuation goes, unless it ends a bracket or a quote: "please
# try again later from [<ip>]." (the bracket would then read as a stamp).
_FINAL_PUNCTUATION = ".!,;:"
_BEFORE_FINAL_PUNCTUATION = "_)>%"
# One word spelled two ways: iCloud's "over quota" and "overquota" (a word
# on its own: not inside a URL or a token).
_SPELLINGS = re.compile(r"(?<!\S)([Oo]ver)-?(?=quota(?:[\s.,;:!?)]|$))")
# Rounds of drops and families before a template is settled; two are the
# rule (one that changes, one that confirms).
_MAX_ROUNDS = 8


def template_of(text: str) -> str:
    """The bounce text's template: the reply's words with variable parts
    masked and decorations dropped, one wording per reply family; the codes
    only in front of a stock text. See the module docstring."""
    return _template(text, merge_families=True)


def wording_of(text: str) -> str:
    """The words a report row shows for a reply: its template without the
    family step, so a row shows a wording one of its replies had, masked,
    and never a family's sentence that none of them carried."""
    return _template(text, merge_families=False)


def _template(text: str, *, merge_families: bool) -> str:
    code, enhanced, words = _read(text)
    if ": //" in words:
        words = _BROKEN_URL.sub(r"\1://", words)
    words = _settle(_MASKS.sub(_mask, words), code, merge_families)
    if words and words.casefold() not in families.STOCK:
        return words
    return " ".join(part for part in (code, enhanced, words) if part)


def _settle(words: str, code: str, merge_families: bool) -> str:
    """Drops and families, until a round changes nothing: a template is
    then its own template (a second reading has no code, and a round
    without one changes nothing either)."""
    for _ in range(_MAX_ROUNDS):
        settled = _round(words, code, merge_families)
        if settled == words:
            break
        words = settled
    return words


def _round(words: str, code: str, merge_families: bool) -> str:
    words = _strip_stamps(words, leading=bool(code))
    if code:
        words = _SUB_CODE.sub("", words, count=1)
    if decoration := _DECORATION.match(words):
        words = words[decoration.end() :]
        if words and not decoration.group()[-1].isspace():
            # Glued to what follows, which the masks read in that company.
            words = _MASKS.sub(_mask, words)
    for family in families.FAMILIES if merge_families else ():
        if not family.code or family.code == code:
            words = family.apply(words)
    if stock := families.STOCK_LEAD.match(words):
        words = f"{stock.group(1)}. {words[stock.end() :]}"
    if words.endswith(")"):
        words = _TAG.sub("", words, count=1)
    if "uota" in words:
        words = _SPELLINGS.sub(r"\1 ", words)
    words = _strip_stamps(words, leading=False)
    bare = words.rstrip(_FINAL_PUNCTUATION)
    if bare and (bare[-1].isalnum() or bare[-1] in _BEFORE_FINAL_PUNCTUATION):
        words = bare
    first = words.split(" ", 1)[0].rstrip(_FINAL_PUNCTUATION).replace("'", "")
    if first.isalpha() and first.islower():  # a word, not "iCloud" or "x.example"
        words = words[0].upper() + words[1:]
    return words


def _mask(match: re.Match[str]) -> str:
    kind = match.lastgroup
    token = match.group()
    if kind == "url":
        return _url(token)
    if kind == "email":
        return EMAIL
    if kind == "date":
        return DATE
    if kind in {"ipv4", "ipv6"}:
        return IP
    if kind == "domain":
        return DOMAIN if _is_domain(token) else token
    if kind == "id":
        if _DIGIT_WORD.fullmatch(token):
            return token
        tag = _VENDOR_TAG.fullmatch(token)
        return f"{tag.group(1).upper()}_{NUMBER}" if tag else ID
    if kind == "number":
        return NUMBER + (match.group("unit") or "")
    return token  # keep


def _is_ipv6(token: str) -> bool:
    """A valid address, or a redacted/truncated one that is unmistakably
    IPv6 ("::", an embedded IPv4, or three colons): "16:36:59" is a time.
    The same rule as the ``ipv6`` pattern, for URL values."""
    try:
        ipaddress.IPv6Address(token)
    except ValueError:
        return "::" in token or "." in token or token.count(":") >= 3
    return True


def _is_domain(token: str) -> bool:
    """A top-level label in one case: "outlook.com", "EXAMPLE.JP"; not
    Exchange's "RESOLVER.ADR.RecipientNotFound" or "QUEUE.Expired"."""
    tld = token.rstrip(">").rsplit(".", 1)[1]
    return tld.islower() or tld.isupper()


# --- URLs --------------------------------------------------------------------


def _url(raw: str) -> str:
    """The URL without rewriting gateways, per-message values masked; the
    punctuation that ended the sentence is given back."""
    url, tail = _trim_url(raw)
    if any(part not in PLACEHOLDERS for part in _ANGLED.findall(url)):
        return URL + tail  # "<...>" glued into it: no URL we can take apart
    if "urldefense" in url or "safelinks" in url:
        inner = _unwrap(url)
        url = inner if _URL_START.match(inner) else url
    parts = _URL_PARTS.match(url)
    if parts is None:  # pragma: no cover - every group is optional
        return URL + tail
    scheme = (parts.group("scheme") or "").lower()
    host = parts.group("host").lower()
    host = families.HELP_HOSTS.get(host, host)
    bare_host = host.rsplit("@", 1)[-1].split(":", 1)[0].strip("[]")
    if _IPV4_VALUE.fullmatch(bare_host) or ":" in bare_host:
        host = IP
    path = parts.group("path")
    path = "" if path == "/" else "/".join(_url_value(s) for s in path.split("/"))
    out = scheme + host + path
    if parts.group("query") is not None:
        query = _QUERY_SEPARATORS.split(parts.group("query"))
        reasons = families.REASON_QUERIES.get(host, frozenset())
        out += "?" + "".join(_query_item(item, reasons) for item in query)
    if parts.group("fragment") is not None:
        out += "#" + _url_value(parts.group("fragment"))
    return out + tail


def _trim_url(raw: str) -> tuple[str, str]:
    """The URL and the punctuation after it: a sentence's full stop, or a
    closing bracket whose opening one is not in the URL."""
    url = raw
    while url and url[-1] in _URL_ENDINGS:
        opener = _URL_OPENERS.get(url[-1])
        if opener is not None and url.count(url[-1]) <= url.count(opener):
            break
        url = url[:-1]
    return url, raw[len(url) :]


def _unwrap(url: str) -> str:
    """The original URL behind Proofpoint URL Defense or Safe Links."""
    v3 = _URLDEFENSE_V3.match(url)
    if v3:
        return v3.group("url")
    v2 = _URLDEFENSE_V2.match(url)
    if v2:
        encoded = _URLDEFENSE_V2_ESCAPE.sub(r"%\1", v2.group("url")).replace("_", "/")
        return unquote(encoded)
    safe = _SAFELINKS.match(url)
    if safe:
        return unquote(safe.group("url"))
    return url


def _query_item(item: str, reasons: frozenset[str]) -> str:
    if item in {"&", ";"}:
        return item
    name, equals, value = item.partition("=")
    if not equals:
        return _url_value(item)
    if name in reasons and value not in PLACEHOLDERS:
        return name + equals + (NUMBER if value.isdigit() else ID)
    if "." in value and _DOMAIN_VALUE.fullmatch(value) and _is_domain(value):
        # "?domain=news.example" names the sender's or the recipient's domain, not the
        # page (in a path, "lookup.cgi" is a file name: only query values are read so).
        return name + equals + DOMAIN
    return name + equals + _url_value(value)


def _url_value(value: str) -> str:
    """A path segment, query value or fragment: kept when it is a word or a
    short number (it names the help topic), masked when it has the shape of
    a per-message value."""
    if len(value) < 7 or value.isalpha():  # shorter than any value we mask
        return value
    plain = unquote(value)
    if _IPV4_VALUE.fullmatch(plain) or (_IPV6_VALUE.fullmatch(plain) and _is_ipv6(plain)):
        return IP
    if _EMAIL_VALUE.fullmatch(plain):
        return EMAIL
    if _DATE_VALUE.fullmatch(plain):
        return DATE
    if plain.isdigit() and len(plain) >= 10:
        return NUMBER
    if len(plain) >= 12 and (_HEX_VALUE.fullmatch(plain) or _has_mixed_run(plain, 8)):
        return ID
    return value


def _has_mixed_run(value: str, length: int) -> bool:
    """Whether a run of letters and digits this long mixes both."""
    return any(
        len(run) >= length and not run.isdigit() and any(c.isdigit() for c in run)
        for run in _ALNUM_RUN.findall(value)
    )


# --- stamps ------------------------------------------------------------------


def _strip_stamps(words: str, *, leading: bool) -> str:
    """The words without the session stamps at their edges (module
    docstring, "Stamps"). Leading ones only after a reply code: without one,
    what a stamp hid could read as a code ("<id> 550-...")."""
    while leading and (stamp := _LEADING_STAMP.match(words)):
        words = words[stamp.end() :]
    body, dash, signature = words.rpartition(" - ")
    ending = ""
    if dash and _SIGNATURE.fullmatch(signature):
        words, ending = body, dash + signature
        while words == ID or words.endswith(" " + ID):  # the session id it signs
            words = words[: -len(ID)].rstrip()
    while (shorter := _without_trailing_stamp(words)) is not None:
        words = shorter
    return (words + ending).strip()


def _without_trailing_stamp(words: str) -> str | None:
    """The words without their last stamp, or None when they end in none
    (module docstring, "Stamps"): "- <domain>", a bracketed stamp, perhaps
    tagged, or an id after the last sentence ("Rejected. <id>", but not
    "queued as <id>"); only a parenthesised stamp before the final full stop.
    """
    if words == ID or words.endswith((". " + ID, "! " + ID, "? " + ID)):
        return words[: -len(ID)].rstrip()
    if words.endswith(DOMAIN):
        rest = words[: -len(DOMAIN)].rstrip()
        if rest == "-" or rest.endswith(" -"):
            return rest[:-1].rstrip()
        return None
    stop = "." if words.endswith(").") else ""
    body = words[: len(words) - len(stop)]
    if not body.endswith(")" if stop else (")", "]")):
        return None
    start = body.rfind("(" if body.endswith(")") else "[")
    if start < 0 or not _STAMP.fullmatch(body, start):
        return None
    tag = start
    while tag > 0 and start - tag < _STAMP_TAG and body[tag - 1].isalpha():
        tag -= 1
    if tag > 0 and not body[tag - 1].isspace():
        return None
    return body[:tag].rstrip() + stop

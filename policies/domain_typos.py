"""Recipient domains that are likely typos of a large mailbox provider's: gmial.com,
hotmial.com, yaho.com, gmail.con, gmailcom.

``likely_typo_of(domain)`` names the provider domain meant, or None. It is asked at RCPT for
every recipient, so it is linear in the domain and costs a few dict probes: the neighbourhood
of every provider name within one edit is worked out once, at import (symmetric deletion: a
word and its one-character deletions are keys), never a distance to each provider per call.

What counts as a typo, and why no more:

- One edit of a provider's *name* (the label before its suffix: ``gmail`` in gmail.com) --
  a deletion, an insertion, a substitution or two neighbours swapped (gmial) -- with the
  provider's own suffix, for names of ``MIN_EDITED_NAME`` letters or more. A shorter name is
  one edit from other real, busy domains (mac.com and mic.com, aol.com and al.com, live.com
  and love.com): nothing in the spelling tells them apart, so short names are left alone
  (a typo there that has no mail server is still caught by the domain check at RCPT).
- One edit of the provider's *suffix* with its name intact (gmail.con, yahoo.fe,
  hotmail.co). A suffix that is no top-level domain at all (con, cmo, comm) is always a
  slip. A real one is a slip only for a long name, and only where it cannot be one of the
  provider's own country domains: a provider we list every domain of (``closed``: Gmail is
  gmail.com and googlemail.com, nothing else), or the classic slips of ``.com``
  (co, cm, om) that squatters register. yahoo.ro or hotmail.kz are left alone: those
  providers run more country domains than any list here keeps up with.
- Both at once only when the suffix is no top-level domain (gmial.con).
- The dot left out: gmailcom, yahooco.uk.

A provider's own domains, listed or a country domain of an open provider, are never typos;
neither is any domain ``policies.providers`` knows as a provider's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from policies.providers import PROVIDERS

__all__ = [
    "MAIL_PROVIDERS",
    "MIN_EDITED_NAME",
    "MailProvider",
    "is_provider_domain",
    "likely_typo_of",
]

# Names shorter than this are not matched by an edit of the name (see the module docstring).
MIN_EDITED_NAME = 5
# The slips of ".com" that are real country codes, and the usual squatters' targets.
_COM_SLIPS = frozenset({"co", "cm", "om"})
_MAX_DOMAIN = 253  # RFC 1035 §2.3.4; longer is no domain, and no work is done on it


@dataclass(frozen=True)
class MailProvider:
    """One mailbox provider's consumer domains. ``closed``: these are all of its domains, so
    the provider's name with another suffix within one edit is a typo; else the provider runs
    country domains beyond these (yahoo.com.vn) and a real country suffix is left alone.
    ``word``: its names are common words (email), whose every spelling nearby is someone
    else's real domain (edmail.com, emil.com): only slips of the suffix count."""

    domains: tuple[str, ...]
    closed: bool = False
    word: bool = False


# In rough order of mailboxes held: when a typo is near two providers, the first is
# suggested. Each is here because a typo of its domains loses real people's mail.
MAIL_PROVIDERS: tuple[MailProvider, ...] = (
    # Gmail: the most mailboxes anywhere; googlemail.com is its name in Germany and the UK.
    MailProvider(("gmail.com",), closed=True),
    MailProvider(("googlemail.com",), closed=True),
    # Yahoo Mail, with its country domains (yahoo.co.jp is Yahoo Japan's own, still real).
    MailProvider(
        (
            "yahoo.com",
            "yahoo.co.uk",
            "yahoo.co.jp",
            "yahoo.fr",
            "yahoo.de",
            "yahoo.it",
            "yahoo.es",
            "yahoo.ca",
            "yahoo.com.au",
            "yahoo.co.in",
            "yahoo.com.br",
            "yahoo.com.mx",
            "yahoo.com.ar",
            "yahoo.co.id",
            "yahoo.com.sg",
            "yahoo.com.ph",
            "yahoo.com.tw",
            "yahoo.com.hk",
            "yahoo.com.vn",
            "yahoo.co.nz",
            "yahoo.co.za",
            "yahoo.co.th",
            "yahoo.gr",
            "yahoo.ie",
            "yahoo.se",
            "yahoo.dk",
            "yahoo.no",
            "yahoo.pl",
            "yahoo.ro",
            "yahoo.at",
            "yahoo.be",
            "yahoo.ch",
            "yahoo.nl",
            "yahoo.pt",
            "yahoo.cn",
        )
    ),
    # Yahoo's other consumer names (y7mail.com: Yahoo!7 in Australia).
    MailProvider(("ymail.com", "rocketmail.com", "y7mail.com"), closed=True),
    # Microsoft's consumer mail (Outlook.com): hotmail, outlook, live and msn, by country.
    MailProvider(
        (
            "hotmail.com",
            "hotmail.co.uk",
            "hotmail.fr",
            "hotmail.de",
            "hotmail.it",
            "hotmail.es",
            "hotmail.ca",
            "hotmail.be",
            "hotmail.nl",
            "hotmail.se",
            "hotmail.no",
            "hotmail.dk",
            "hotmail.fi",
            "hotmail.ch",
            "hotmail.at",
            "hotmail.gr",
            "hotmail.co.jp",
            "hotmail.com.au",
            "hotmail.com.br",
            "hotmail.com.ar",
            "hotmail.com.mx",
            "hotmail.com.tr",
            "hotmail.co.za",
            "hotmail.co.nz",
            "hotmail.co.il",
            "hotmail.co.th",
        )
    ),
    MailProvider(
        (
            "outlook.com",
            "outlook.fr",
            "outlook.de",
            "outlook.es",
            "outlook.it",
            "outlook.jp",
            "outlook.be",
            "outlook.at",
            "outlook.dk",
            "outlook.ie",
            "outlook.com.au",
            "outlook.com.br",
            "outlook.com.tr",
            "outlook.co.nz",
        )
    ),
    MailProvider(
        (
            "live.com",
            "live.co.uk",
            "live.fr",
            "live.de",
            "live.it",
            "live.nl",
            "live.be",
            "live.ca",
            "live.se",
            "live.dk",
            "live.no",
            "live.ie",
            "live.at",
            "live.cl",
            "live.jp",
            "live.com.au",
            "live.com.mx",
            "live.com.ar",
            "live.cn",
        )
    ),
    MailProvider(("msn.com",)),
    # AOL (run by Yahoo), with its European domains.
    MailProvider(("aol.com", "aol.co.uk", "aol.de", "aol.fr", "aol.it", "aim.com")),
    # Apple's iCloud Mail; me.com and mac.com are its older names, still delivered.
    MailProvider(("icloud.com", "me.com", "mac.com"), closed=True),
    # United Internet: GMX and WEB.DE (the largest in Germany), mail.com and its email.com.
    MailProvider(("gmx.de", "gmx.net", "gmx.com", "gmx.at", "gmx.ch", "gmx.fr", "gmx.co.uk")),
    MailProvider(("web.de",), closed=True),
    MailProvider(("mail.com", "email.com"), word=True),
    # VK's Mail.ru and Yandex, the largest in Russia.
    MailProvider(("mail.ru", "inbox.ru", "list.ru", "bk.ru")),
    MailProvider(("yandex.ru", "yandex.com", "yandex.ua", "yandex.by", "yandex.kz", "ya.ru")),
    # Large access providers' mail: Comcast, Verizon (now AOL's), AT&T, Cox, Charter.
    MailProvider(("comcast.net",), closed=True),
    MailProvider(("verizon.net",), closed=True),
    MailProvider(("att.net", "sbcglobal.net", "bellsouth.net"), closed=True),
    MailProvider(("cox.net", "charter.net"), closed=True),
    # France: Orange (and its old wanadoo.fr), Free, La Poste, SFR.
    MailProvider(("orange.fr", "wanadoo.fr"), closed=True),
    MailProvider(("free.fr",), closed=True),
    MailProvider(("laposte.net",), closed=True),
    MailProvider(("sfr.fr",), closed=True),
    # Germany's Telekom, Italy's Libero, the Czech Seznam.
    MailProvider(("t-online.de",), closed=True),
    MailProvider(("libero.it",), closed=True),
    MailProvider(("seznam.cz",), closed=True),
    # China: Tencent's QQ Mail and Foxmail, NetEase's 163/126/yeah, Sina.
    MailProvider(("qq.com", "foxmail.com"), closed=True),
    MailProvider(("163.com", "126.com", "yeah.net"), closed=True),
    MailProvider(("sina.com", "sina.cn"), closed=True),
    # Korea: Naver and Kakao's Daum/Hanmail.
    MailProvider(("naver.com",), closed=True),
    MailProvider(("daum.net", "hanmail.net"), closed=True),
    # Proton Mail, Zoho, Fastmail: smaller, but their users type these names by hand.
    MailProvider(("protonmail.com", "protonmail.ch", "proton.me", "pm.me"), closed=True),
    MailProvider(("zoho.com", "zohomail.com"), closed=True),
    # Fastmail offers many more (fastmail.im, fastmail.us): open.
    MailProvider(("fastmail.com", "fastmail.fm")),
    # The UK's and Australia's and Canada's large access providers.
    MailProvider(("btinternet.com", "sky.com", "virginmedia.com"), closed=True),
    MailProvider(("bigpond.com", "optusnet.com.au"), closed=True),
    MailProvider(("shaw.ca", "rogers.com", "sympatico.ca"), closed=True),
    # India's Rediffmail.
    MailProvider(("rediffmail.com",), closed=True),
)

# The two-letter top-level domains (country codes) in the ICANN section of the Public Suffix
# List. A suffix ending in one of these may be a provider's country domain.
_COUNTRY_CODE_LIST = """
    ac ad ae af ag ai al am ao aq ar as at au aw ax az ba bb be bf bg bh bi bj bm bn bo br bs
    bt bv bw by bz ca cc cd cf cg ch ci cl cm cn co cr cu cv cw cx cy cz de dj dk dm do dz ec
    ee eg es et eu fi fj fm fo fr ga gb gd ge gf gg gh gi gl gm gn gp gq gr gs gt gu gw gy hk
    hm hn hr ht hu id ie il im in io iq ir is it je jo jp ke kg ki km kn kp kr kw ky kz la lb
    lc li lk lr ls lt lu lv ly ma mc md me mg mh mk ml mn mo mp mq mr ms mt mu mv mw mx my mz
    na nc ne nf ng ni nl no nr nu nz om pa pe pf ph pk pl pm pn pr ps pt pw py qa re ro rs ru
    rw sa sb sc sd se sg sh si sj sk sl sm sn so sr ss st su sv sx sy sz tc td tf tg th tj tk
    tl tm tn to tr tt tv tw tz ua ug uk us uy uz va vc ve vg vi vn vu wf ws ye yt zm zw
"""
_COUNTRY_CODES = frozenset(_COUNTRY_CODE_LIST.split())
# The second levels that countries sell under their code (co.uk, com.br, ne.jp, or.kr).
_COUNTRY_SECOND_LEVELS = frozenset({"co", "com", "net", "org", "ne", "or", "ac", "gen"})
# Top-level domains that exist and are one edit from com, net or org: gmail.cam is a squat.
_REAL_NEAR_TOP_LEVEL = frozenset({"com", "net", "org", "cam", "bet", "new", "pet", "ong"})


def _keyboard_neighbours() -> dict[str, frozenset[str]]:
    """Keys that touch on a QWERTY keyboard (rows staggered as on the keyboard)."""
    rows = ("1234567890-", "qwertyuiop", "asdfghjkl", "zxcvbnm")
    shift = (0.0, 0.5, 0.75, 1.25)
    place = {c: (r, i + shift[r]) for r, row in enumerate(rows) for i, c in enumerate(row)}
    return {
        c: frozenset(
            d
            for d, (r2, x2) in place.items()
            if d != c and ((r2 == r and abs(x2 - x) == 1) or (abs(r2 - r) == 1 and abs(x2 - x) < 1))
        )
        for c, (r, x) in place.items()
    }


_NEIGHBOURS = _keyboard_neighbours()


def _touching(a: str, b: str) -> bool:
    return b in _NEIGHBOURS.get(a, ())


class _OneEditIndex:
    """Words within one edit (deletion, insertion, substitution, neighbours swapped) of a
    query, by symmetric deletion: each word and each of its one-letter deletions is a key,
    so a query probes itself and its own deletions only (len + 1 probes).

    ``keyboard``: as a hand types. A letter typed for another is a key touching it (gnail,
    hmail; not amail, which is a real domain of its own), and a letter typed in excess
    doubles a letter beside it or touches one (gmaill, gmaoil); drops and swaps are any."""

    def __init__(self, words: Iterable[str], *, keyboard: bool = False) -> None:
        self._keyboard = keyboard
        self._words: set[str] = set()
        # deletion -> (word, position deleted); the word itself under position -1
        self._keys: dict[str, list[tuple[str, int]]] = {}
        for word in words:
            if word in self._words:
                continue
            self._words.add(word)
            self._keys.setdefault(word, []).append((word, -1))
            for i in range(len(word)):
                self._keys.setdefault(word[:i] + word[i + 1 :], []).append((word, i))
        self.longest = max((len(w) for w in self._words), default=0)

    def near(self, query: str) -> list[str]:
        """The indexed words exactly one edit from ``query`` (``query`` itself excluded)."""
        if len(query) > self.longest + 1:
            return []
        # query is a word with one letter deleted: the typist dropped a letter
        found = [w for w, i in self._keys.get(query, ()) if i >= 0]
        for j in range(len(query)):
            shorter = query[:j] + query[j + 1 :]
            for word, i in self._keys.get(shorter, ()):
                if i == -1:
                    if self._typed_in_excess(query, j):
                        found.append(word)  # gmaill
                elif i == j:
                    if not self._keyboard or _touching(word[i], query[i]):
                        found.append(word)  # gnail
                elif abs(i - j) == 1 and query[i] == word[j] and query[j] == word[i]:
                    found.append(word)  # gmial
        return [w for w in dict.fromkeys(found) if w != query]

    def _typed_in_excess(self, query: str, j: int) -> bool:
        """Whether the letter at ``j`` reads as typed by a slip: next to a key beside it."""
        if not self._keyboard:
            return True
        extra = query[j]
        beside = query[max(j - 1, 0) : j] + query[j + 1 : j + 2]
        return any(extra == b or _touching(b, extra) for b in beside)


def _split(domain: str) -> tuple[str, str]:
    """(name, suffix): the first label and the rest; a dotless domain is all name."""
    name, _, suffix = domain.partition(".")
    return name, suffix


def _is_country_suffix(suffix: str) -> bool:
    """Whether ``suffix`` reads as a country's: its code (``de``), or a second level
    under it (``co.uk``, ``com.br``)."""
    labels = suffix.split(".")
    if labels[-1] not in _COUNTRY_CODES:
        return False
    return len(labels) == 1 or (len(labels) == 2 and labels[0] in _COUNTRY_SECOND_LEVELS)


def _is_top_level_or_country(suffix: str) -> bool:
    return suffix in _REAL_NEAR_TOP_LEVEL or _is_country_suffix(suffix)


_RANK: dict[str, int] = {}
_CLOSED_NAMES: set[str] = set()
_WORDS: set[str] = set()
_SUFFIXES_OF: dict[str, list[str]] = {}  # name -> its suffixes, in rank order
for _provider in MAIL_PROVIDERS:
    for _domain in _provider.domains:
        _RANK.setdefault(_domain, len(_RANK))
        _name, _suffix = _split(_domain)
        _SUFFIXES_OF.setdefault(_name, []).append(_suffix)
        if _provider.closed:
            _CLOSED_NAMES.add(_name)
        if _provider.word:
            _WORDS.add(_name)

# Never a typo: every domain listed here or known to policies.providers as a provider's own.
_REAL = frozenset(_RANK) | frozenset(d for p in PROVIDERS for d in p.domains)
_NAMES = _OneEditIndex(
    (n for n in _SUFFIXES_OF if len(n) >= MIN_EDITED_NAME and n not in _WORDS), keyboard=True
)
_SUFFIXES = _OneEditIndex(s for suffixes in _SUFFIXES_OF.values() for s in suffixes)
# The dot left out: gmailcom -> gmail.com, yahooco.uk -> yahoo.co.uk.
_WITHOUT_A_DOT: dict[str, str] = {}
for _domain in _RANK:
    for _at in (i for i, c in enumerate(_domain) if c == "."):
        _WITHOUT_A_DOT.setdefault(_domain[:_at] + _domain[_at + 1 :], _domain)


def is_provider_domain(domain: str) -> bool:
    """Whether ``domain`` is one of the listed providers' own (never a typo)."""
    return domain.lower().rstrip(".") in _REAL


def likely_typo_of(domain: str) -> str | None:
    """The large provider's domain ``domain`` is likely a typo of, or None.

    ``domain`` as it was written (case and a final dot do not matter); a non-ASCII or
    over-long one is never a typo of these ASCII names."""
    domain = domain.lower().removesuffix(".")
    if len(domain) > _MAX_DOMAIN or not domain.isascii() or domain in _REAL:
        return None
    candidates = _candidates(domain)
    if not candidates:
        return None
    return min(candidates, key=_RANK.__getitem__)


def _candidates(domain: str) -> list[str]:
    dotless = _WITHOUT_A_DOT.get(domain)
    if dotless is not None:
        return [dotless]
    name, suffix = _split(domain)
    if not suffix:
        return []
    found: list[str] = []
    if name in _SUFFIXES_OF:
        found += _suffix_slips(name, suffix)
    for near in _NAMES.near(name):
        if suffix in _SUFFIXES_OF[near]:
            found.append(f"{near}.{suffix}")  # gmial.com
        elif not _is_top_level_or_country(suffix):
            # gmial.con: two slips, believed only where the suffix exists nowhere.
            found += [f"{near}.{s}" for s in _SUFFIXES.near(suffix) if s in _SUFFIXES_OF[near]]
    return found


def _suffix_slips(name: str, suffix: str) -> list[str]:
    """The provider's domains that ``name.suffix`` is a slip of the suffix of."""
    own = _SUFFIXES_OF[name]
    if suffix in own:
        return []
    slips = [s for s in _SUFFIXES.near(suffix) if s in own]
    if not slips or not _is_top_level_or_country(suffix):
        return [f"{name}.{s}" for s in slips]  # gmail.con, yahoo.fe, mac.cmo
    # A real suffix: a long name only, and only where it cannot be the provider's own.
    if len(name) < MIN_EDITED_NAME:
        return []
    if name in _CLOSED_NAMES:
        return [f"{name}.{s}" for s in slips]  # gmail.co, gmail.cam
    if suffix in _COM_SLIPS and "com" in slips:
        return [f"{name}.com"]  # hotmail.co, yahoo.cm
    return []

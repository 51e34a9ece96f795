"""Route and pool selection (first matching route; campaign, then From domain, then route)."""

from __future__ import annotations

from relay.config import load_config
from relay.routing import SourceIPs, pool_for, route_for

CONFIG = """
[[pools]]
name = "default"
source_ips = ["127.0.0.2", "127.0.0.3"]
[[pools]]
name = "news"
source_ips = ["127.0.0.4"]
from_domains = ["news.example.com"]
[[pools]]
name = "promo"
source_ips = ["127.0.0.5"]
campaigns = ["black-friday"]
[[routes]]
domains = ["internal.example", "*.corp.example"]
mode = "static"
hosts = ["127.0.0.1:2526"]
pool = "news"
[[routes]]
domains = ["*"]
mode = "mx"
"""


def test_first_matching_route_wins(write_config):
    """Exact and wildcard-subdomain matches take the first route; anything else the catch-all."""
    rules = load_config(write_config(CONFIG, replace_base=True)).rules
    assert route_for(rules.routes, "internal.example").mode == "static"
    assert route_for(rules.routes, "a.corp.example").mode == "static"
    assert route_for(rules.routes, "corp.example").mode == "mx"
    assert route_for(rules.routes, "gmail.com").mode == "mx"


def test_pool_by_campaign_then_from_domain_then_route(write_config):
    """A campaign claim beats a From-domain claim, which beats the route's pool."""
    rules = load_config(write_config(CONFIG, replace_base=True)).rules
    mx = route_for(rules.routes, "gmail.com")
    static = route_for(rules.routes, "internal.example")
    assert pool_for(rules, mx, "news.example.com", "black-friday").name == "promo"
    assert pool_for(rules, mx, "news.example.com", None).name == "news"
    assert pool_for(rules, mx, "other.example", None).name == "default"
    assert pool_for(rules, static, None, None).name == "news"


def test_round_robin_and_avoid(write_config):
    """IPs take turns; an IP to avoid is skipped unless it is the pool's only one."""
    rules = load_config(write_config(CONFIG, replace_base=True)).rules
    default = rules.pools[0]
    ips = SourceIPs()
    assert [ips.pick(default) for _ in range(4)] == ["127.0.0.2", "127.0.0.3"] * 2
    assert {ips.pick(default, {"127.0.0.2"}) for _ in range(3)} == {"127.0.0.3"}
    assert ips.pick(rules.pools[1], {"127.0.0.4"}) == "127.0.0.4"

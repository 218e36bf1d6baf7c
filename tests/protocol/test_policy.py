"""Unit tests of wshub.policy: each guard's rule, with the look-alikes attackers use."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wshub.policy import (
    ClientIds,
    OriginPolicy,
    PerIpCounter,
    SessionSigner,
    TrustedProxies,
    client_ip,
    ip_key,
    normalize_origin,
    parse_cookie,
)
from wshub.protocol.flood import PingFloodGuard

# ------------------------------------------------------------------ origins


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://example.com", True),
        ("https://EXAMPLE.com", True),  # host names are case-insensitive
        ("HTTPS://example.com", True),
        ("https://example.com.", True),  # same DNS name (absolute form)
        ("https://example.com:443", True),  # the default port, spelled out
        ("https://example.com/", False),  # an origin has no path
        ("https://example.com.evil.net", False),  # suffix look-alike
        ("https://evil-example.com", False),
        ("https://example.com@evil.net", False),  # user info trick
        ("https://evil.net#https://example.com", False),
        ("https://evil.net?https://example.com", False),
        ("http://example.com", False),  # other scheme
        ("https://example.com:8443", False),  # other port
        ("https://sub.example.com", False),
        ("https://example.co", False),
        ("https://example.com, https://evil.net", False),  # two Origin headers joined
        ("null", False),
        ("", False),
        ("https://", False),
        ("https://example.com:99999", False),
        ("file:///etc/passwd", False),
    ],
)
def test_allow_list_is_exact(origin: str, allowed: bool) -> None:
    policy = OriginPolicy(["https://example.com"])
    assert policy.allows(origin, "example.com", tls=True) is allowed


def test_allow_list_entry_normalised() -> None:
    policy = OriginPolicy(["HTTPS://Example.COM.:443/", "http://localhost:8080"])
    assert policy.allows("https://example.com", "x", tls=False)
    assert policy.allows("http://localhost:8080", "x", tls=False)
    assert not policy.allows("http://localhost", "x", tls=False)
    assert not policy.allows("http://localhost:8081", "x", tls=False)


def test_bad_allow_list_entries_raise() -> None:
    with pytest.raises(ValueError):
        OriginPolicy(["example.com"])
    with pytest.raises(ValueError):
        OriginPolicy(["https://example.com/path"])
    with pytest.raises(TypeError):
        OriginPolicy([b"https://example.com"])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        OriginPolicy(42)  # type: ignore[arg-type]


def test_star_allows_any_origin_and_none_always_allowed() -> None:
    assert OriginPolicy("*").allows("https://evil.net", "example.com", tls=False)
    for value in (None, "*", ["https://example.com"]):
        # No Origin: not a browser, nothing to protect (API.md).
        assert OriginPolicy(value).allows(None, "example.com", tls=False)


@pytest.mark.parametrize(
    ("origin", "host", "tls", "allowed"),
    [
        ("http://example.com", "example.com", False, True),
        ("http://Example.COM", "example.com", False, True),
        ("http://example.com", "EXAMPLE.COM.", False, True),
        ("https://example.com", "example.com", True, True),
        # TLS terminated by a proxy: the page is https, we see ws.
        ("https://example.com", "example.com", False, True),
        ("http://example.com:8080", "example.com:8080", False, True),
        ("http://127.0.0.1:8080", "127.0.0.1:8080", False, True),
        ("http://[::1]:8080", "[::1]:8080", False, True),
        ("http://example.com:8080", "example.com", False, False),  # other port
        ("http://example.com", "example.com:8080", False, False),
        ("https://example.com", "example.com:80", False, False),
        ("http://example.com.evil.net", "example.com", False, False),
        ("http://example.com", "example.com.evil.net", False, False),
        ("http://evil.net", "example.com", False, False),
        ("http://example.com", "evil@example.com", False, False),  # malformed Host
        ("http://example.com", "example.com/x", False, False),
        ("http://example.com", "", False, False),
        ("null", "example.com", False, False),
    ],
)
def test_same_origin(origin: str, host: str, tls: bool, allowed: bool) -> None:
    assert OriginPolicy(None).allows(origin, host, tls=tls) is allowed


def test_same_origin_without_host_refused() -> None:
    assert not OriginPolicy(None).allows("http://example.com", None, tls=False)


def test_normalize_origin() -> None:
    assert normalize_origin("WSS://A.example.:1234") == ("wss", "a.example", 1234)
    assert normalize_origin("http://a b.example") is None


# ------------------------------------------------------------------ per-IP keys


def test_ip_key_ipv4_and_mapped() -> None:
    assert ip_key("192.0.2.7") == "192.0.2.7"
    assert ip_key("::ffff:192.0.2.7") == "192.0.2.7"  # IPv4-mapped: same client
    assert ip_key("::ffff:c000:207") == "192.0.2.7"


def test_ip_key_ipv6_per_64() -> None:
    a = ip_key("2001:db8:1:2:aaaa::1")
    assert a == ip_key("2001:db8:1:2:ffff:ffff:ffff:ffff")  # same /64
    assert a != ip_key("2001:db8:1:3::1")  # next /64
    assert ip_key("fe80::1%eth0") == ip_key("fe80::2")  # zone id dropped
    assert ip_key("::1") != ip_key("127.0.0.1")  # two different keys
    assert ip_key("not an ip") == "not an ip"


def test_per_ip_counter_limits_and_empties() -> None:
    c = PerIpCounter()
    assert c.try_acquire("a", 2) and c.try_acquire("a", 2)
    assert not c.try_acquire("a", 2)
    assert c.try_acquire("b", 2)
    assert c.count("a") == 2 and len(c) == 2
    c.release("a")
    c.release("a")
    c.release("b")
    assert len(c) == 0
    c.release("a")  # a stray release never goes negative or leaves an entry
    assert len(c) == 0 and c.count("a") == 0
    for _ in range(1000):
        assert c.try_acquire("x", 0)  # < 1: no limit
    assert c.count("x") == 1000


def test_per_ip_counter_may_keep_is_a_release_and_acquire_without_the_churn() -> None:
    for held, limit in [(1, 1), (2, 2), (3, 2), (5, 0), (2, 3)]:
        c = PerIpCounter()
        for _ in range(held):
            assert c.try_acquire("a", 0)
        d = PerIpCounter()
        for _ in range(held):
            assert d.try_acquire("a", 0)
        d.release("a")
        assert c.may_keep("a", limit) is d.try_acquire("a", limit)
        assert c.count("a") == held  # unchanged either way


# -------------------------------------------------------------- forwarded-for

PROXIES = TrustedProxies(["10.0.0.0/8", "fd00::1"])


def test_untrusted_peer_headers_ignored() -> None:
    headers = {"x-forwarded-for": "203.0.113.9", "forwarded": "for=203.0.113.9"}
    assert client_ip("198.51.100.1", headers, PROXIES) == "198.51.100.1"
    assert client_ip("198.51.100.1", headers, TrustedProxies([])) == "198.51.100.1"


def test_x_forwarded_for_rightmost_untrusted() -> None:
    # The client forged "1.2.3.4"; the proxy appended the real address.
    headers = {"x-forwarded-for": "1.2.3.4, 203.0.113.9"}
    assert client_ip("10.1.1.1", headers, PROXIES) == "203.0.113.9"
    # Two proxies of ours in the chain.
    headers = {"x-forwarded-for": "1.2.3.4, 203.0.113.9, 10.2.2.2"}
    assert client_ip("10.1.1.1", headers, PROXIES) == "203.0.113.9"
    # Garbage in the chain: nothing beyond it is believed.
    headers = {"x-forwarded-for": "203.0.113.9, junk, 10.2.2.2"}
    assert client_ip("10.1.1.1", headers, PROXIES) == "10.2.2.2"
    assert client_ip("10.1.1.1", {}, PROXIES) == "10.1.1.1"


def test_forwarded_header() -> None:
    headers = {"forwarded": 'for=1.2.3.4, for="[2001:db8::7]:4711";proto=https'}
    assert client_ip("fd00::1", headers, PROXIES) == "2001:db8::7"
    headers = {"forwarded": "for=203.0.113.9:1234;by=10.0.0.1"}
    assert client_ip("10.0.0.1", headers, PROXIES) == "203.0.113.9"
    headers = {"forwarded": "for=unknown"}
    assert client_ip("10.0.0.1", headers, PROXIES) == "10.0.0.1"
    headers = {"forwarded": "for=_hidden, for=203.0.113.9"}
    assert client_ip("10.0.0.1", headers, PROXIES) == "203.0.113.9"


def test_both_headers_disagreeing_are_not_believed() -> None:
    # The proxy sets X-Forwarded-For and passes the client's Forwarded through.
    headers = {"x-forwarded-for": "203.0.113.9", "forwarded": "for=1.2.3.4"}
    assert client_ip("10.0.0.1", headers, PROXIES) == "10.0.0.1"
    headers = {"x-forwarded-for": "203.0.113.9", "forwarded": "for=203.0.113.9"}
    assert client_ip("10.0.0.1", headers, PROXIES) == "203.0.113.9"


def test_ipv4_mapped_peer_is_trusted_as_ipv4() -> None:
    headers = {"x-forwarded-for": "203.0.113.9"}
    assert client_ip("::ffff:10.0.0.1", headers, PROXIES) == "203.0.113.9"


def test_trusted_proxies_validation() -> None:
    with pytest.raises(TypeError):
        TrustedProxies("10.0.0.1")  # a str is not a list
    with pytest.raises(ValueError):
        TrustedProxies(["not-an-ip"])


# ------------------------------------------------------------------- cookies


def test_parse_cookie() -> None:
    assert parse_cookie("a=1; wshub=xyz; b=2", "wshub") == "xyz"
    assert parse_cookie('wshub="xyz"', "wshub") == "xyz"
    assert parse_cookie("wshubx=1", "wshub") is None
    assert parse_cookie(None, "wshub") is None


ID = "7f1c7a4e-2d7b-4f57-9d1f-0a3c5b6e8f90"


def test_session_round_trip_and_expiry() -> None:
    s = SessionSigner(b"k" * 32)
    value = s.sign(ID, 1764200000)
    assert value.startswith(ID + ".1764200000000.")  # milliseconds
    assert s.verify(value, 1764199999.0) == ID
    assert s.session(value, 1764199999.0) == (ID, 1764200000.0)
    assert s.verify(value, 1764200000.0) is None  # expired
    assert SessionSigner(b"other").verify(value, 0) is None  # another secret


def test_session_expiry_to_the_millisecond() -> None:
    s = SessionSigner(b"k" * 32)
    value = s.sign(ID, 1764200000.25)
    assert value.split(".")[1] == "1764200000250"
    assert s.session(value, 1764200000.249) == (ID, 1764200000.25)
    assert s.verify(value, 1764200000.25) is None


def test_session_cookie_of_wshub_0_1_still_accepted() -> None:
    # wshub 0.1 wrote the expiry in whole seconds: <id>.<seconds>.<mac>.
    import base64

    key = b"secret-key"
    mac = hmac.new(key, f"{ID}.1764200000".encode(), hashlib.sha256).digest()
    old = f"{ID}.1764200000.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    s = SessionSigner(key)
    assert s.session(old, 1764199999.5) == (ID, 1764200000.0)
    assert s.verify(old, 1764200000.0) is None


@pytest.mark.parametrize("key", [b"secret-key", b"k" * 64, b"x" * 65, bytes(range(200))])
def test_session_mac_is_hmac_sha256(key: bytes) -> None:
    # Keys shorter than, equal to and longer than SHA-256's 64-byte block
    # (a longer key is hashed first, RFC 2104): the precomputed states must
    # give exactly the standard library's HMAC.
    import base64

    signer = SessionSigner(key)
    for expiry in (2000, 1764200000.5):
        millis = int(expiry * 1000)
        mac = hmac.new(key, f"{ID}.{millis}".encode(), hashlib.sha256).digest()
        expected = base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
        assert signer.sign(ID, expiry) == f"{ID}.{millis}.{expected}"


def test_client_ids_are_random_uuid4_strings() -> None:
    import uuid

    ids = ClientIds()
    made = [ids.new() for _ in range(1000)]  # several batches
    assert len(set(made)) == 1000
    for text in made:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
    # The random digits stay random: each variant digit and, in every other
    # random position, all sixteen hex digits turn up.
    assert {text[19] for text in made} == set("89ab")
    for pos in (0, 9, 15, 20, 35):
        assert len({text[pos] for text in made}) == 16


@pytest.mark.parametrize(
    "mutate",
    [
        lambda v: v[:-1] + ("A" if v[-1] != "A" else "B"),  # tampered MAC
        lambda v: v.replace(".2000000.", ".9999000."),  # extended expiry
        lambda v: "00000000-0000-4000-8000-000000000000" + v[36:],  # another ID
        lambda v: v.upper(),
        lambda v: v + ".x",
        lambda v: v.split(".")[0],
        lambda v: "",
        lambda v: "a.b.c",
        lambda v: v.replace(".2000000.", ".²²²²."),  # non-ASCII digits
        lambda v: v[:-2] + "é",  # non-ASCII MAC
        lambda v: v.replace("-", "", 1),  # non-canonical UUID spelling
        lambda v: "{" + ID + "}" + v[36:],
        lambda v: v + "A" * 300,
    ],
)
def test_forged_or_malformed_cookies_rejected(mutate: object) -> None:
    s = SessionSigner("secret")
    value = s.sign(ID, 2000)
    assert callable(mutate)
    forged = mutate(value)
    assert forged != value
    assert s.verify(forged, 0) is None


def test_secret_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSHUB_SECRET", "from-env")
    value = SessionSigner(None).sign(ID, 2000)
    assert SessionSigner("from-env").verify(value, 0) == ID
    monkeypatch.delenv("WSHUB_SECRET")
    # Without a secret, each process (signer) picks its own random key.
    assert SessionSigner(None).verify(value, 0) is None
    with pytest.raises(ValueError):
        SessionSigner("")
    with pytest.raises(TypeError):
        SessionSigner(123)  # type: ignore[arg-type]


# ---------------------------------------------------------------- ping flood


def test_ordinary_pings_answered_at_once() -> None:
    g = PingFloodGuard(burst=16, rate=8.0, limit=128)
    for t in range(1000):  # one ping per second for 1000 s
        assert g.on_ping(float(t)) == PingFloodGuard.ANSWER


def test_flood_is_bounded_then_violation() -> None:
    g = PingFloodGuard(burst=16, rate=8.0, limit=128)
    verdicts = [g.on_ping(0.0) for _ in range(16 + 128 + 1)]
    assert verdicts[:16] == [PingFloodGuard.ANSWER] * 16
    assert verdicts[16:-1] == [PingFloodGuard.DEFER] * 128
    assert verdicts[-1] == PingFloodGuard.VIOLATION


def test_deferred_ping_answered_when_a_token_returns() -> None:
    g = PingFloodGuard(burst=2, rate=4.0, limit=100)
    assert g.on_ping(0.0) == g.ANSWER
    assert g.on_ping(0.0) == g.ANSWER
    assert g.on_ping(0.0) == g.DEFER
    assert g.seconds_until_token() == pytest.approx(0.25)
    assert not g.take_deferred(0.1)
    assert g.take_deferred(0.3)


def test_sustained_fast_pinging_is_closed_eventually() -> None:
    # 100 pings/s for a while: answered at most `rate` per second, then 1008.
    g = PingFloodGuard(burst=16, rate=8.0, limit=128)
    answered = 0
    t = 0.0
    verdict = g.ANSWER
    while verdict != g.VIOLATION:
        verdict = g.on_ping(t)
        answered += verdict == g.ANSWER
        t += 0.01
        assert t < 10, "a sustained flood must be closed"
    assert answered <= 16 + 8 * t + 1


@settings(max_examples=500, deadline=None)
@given(
    target=st.text(alphabet="/?#%&=.:;@!$'()*+,~-_ab\t\r\n\\[]é", max_size=25),
    host=st.one_of(
        st.sampled_from(["127.0.0.1:9001", "[::1]:80", "example.com", "", "x/admin?"]),
        st.text(alphabet="ab.:[]@\t\n /?#é\u2100", max_size=8),
    ),
    scheme=st.sampled_from(["ws", "wss"]),
)
def test_the_path_comes_from_the_target_alone(target: str, host: str, scheme: str) -> None:
    # The per-path event name and url() come from the target; the Host is
    # only ever the netloc, and one that could be more is refused (#15).
    from urllib.parse import urlsplit

    from wshub.hub import split_target
    from wshub.policy import valid_host

    t = "/" + target
    path, query = split_target(t)
    expected = urlsplit(f"{scheme}://example.com{t}")
    assert (path, query) == (expected.path, expected.query)
    if any(c in host for c in "/?#@\\ \t\r\n"):
        assert not valid_host(host)
    if valid_host(host):
        url = urlsplit(f"{scheme}://{host}{path}" + (f"?{query}" if query else ""))
        assert (url.netloc, url.path, url.query) == (host, path, query)
        _ = url.port  # no ValueError either


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/a/b?c=d#e", ("/a/b", "c=d")),
        ("//evil.example/x", ("//evil.example/x", "")),
        ("ws://other.example/chat?x=1", ("/chat", "x=1")),
        ("http://other.example", ("/", "")),
    ],
)
def test_split_target(target: str, expected: tuple[str, str]) -> None:
    from wshub.hub import split_target

    assert split_target(target) == expected


@pytest.mark.parametrize("target", ["*", "admin", "", "x://"])
def test_split_target_refuses_what_is_not_a_target(target: str) -> None:
    from wshub.hub import split_target

    with pytest.raises(ValueError):
        split_target(target)


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("example.com", True),
        ("example.com:8080", True),
        ("127.0.0.1:9001", True),
        ("[::1]:80", True),
        ("", True),
        ("x/admin?", False),
        ("a@b", False),
        ("a b", False),
        ("a#b", False),
        ("a\\b", False),
        ("a.example, b.example", False),  # two Host fields, joined
        ("[nope]", False),
        ("a:99999", False),
        ("é.example", False),
    ],
)
def test_valid_host(host: str, ok: bool) -> None:
    from wshub.policy import valid_host

    assert valid_host(host) is ok


@pytest.mark.parametrize("value", [None, ["http://a.example", "https://b.example:8443"]])
def test_origin_verdicts_are_remembered_within_bounds(value: list[str] | None) -> None:
    origins = [
        "http://a.example",
        "https://b.example:8443",
        "http://A.EXAMPLE.",
        "http://evil.example",
        "null",
        "http://a.example@evil",
        "http://" + "x" * 300,
    ]
    hosts = ["a.example", "b.example:8443", "evil.example", None, "a.example:80"]
    cached = OriginPolicy(value)
    for _ in range(2):  # the second round is answered from the cache
        for origin in origins:
            for host in hosts:
                for tls in (False, True):
                    fresh = OriginPolicy(value)._judge(origin, host, tls)
                    assert cached.allows(origin, host, tls) == fresh, (origin, host, tls)
    long_keys = [k for k in cached._verdicts if len(k[0]) > 256]
    assert not long_keys  # long values are judged, never stored
    for i in range(3000):
        cached.allows(f"http://h{i}.example", "a.example", False)
    assert len(cached._verdicts) <= OriginPolicy._CACHE_SIZE

"""Inference access: API keys by digest, token buckets, the per-IP LRU, X-Forwarded-For, admission."""

from __future__ import annotations

import pytest

from bentos.api.problems import REST
from bentos.dataplane.access import AccessGate, Admission, LiveKey, TokenBucket, digest, new_secret
from bentos.errors import Forbidden, RateLimited, TooBusy, Unauthorized
from bentos.settings import ServeSettings


def gate(**settings: object) -> tuple[AccessGate, str, str]:
    g = AccessGate(ServeSettings(**settings))  # type: ignore[arg-type]
    gold, plain = new_secret(), new_secret()
    g.set_keys([(digest(gold), LiveKey("gold", 50, 10, frozenset({"pin"}), weight=3.0)),
                (digest(plain), LiveKey("plain", 5, 1, frozenset()))])
    return g, gold, plain


def test_a_bucket_gives_its_burst_then_its_rate() -> None:
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.1)  # the next token is 1/rate away
    assert bucket.take(0.05) == pytest.approx(0.05)
    assert bucket.take(0.1) == 0.0
    assert bucket.take(100.0) == 0.0 and bucket.tokens == pytest.approx(2.0)  # refills to burst, not beyond


def test_keys_are_found_by_digest_and_a_wrong_or_missing_one_is_401_when_required() -> None:
    g, gold, plain = gate(require_api_key=True)
    assert g.admit({"x-api-key": gold}, "10.0.0.1").key == "gold"
    plain_caller = g.admit({"authorization": f"Bearer {plain}"}, "10.0.0.1")
    assert plain_caller.key == "plain" and plain_caller.weight == 1.0
    assert g.admit({"x-api-key": gold}, "10.0.0.1").weight == 3.0  # the key's generation weight comes along
    for headers in ({}, {"x-api-key": "sy_not-a-key"}, {"authorization": "Bearer something-else"}):
        with pytest.raises(Unauthorized):
            g.admit(headers, "10.0.0.1")
    assert len(digest(gold)) == 64 and gold not in digest(gold)


def test_without_require_a_request_with_no_key_is_anonymous_but_a_bad_key_is_still_401() -> None:
    g, _, _ = gate()
    assert g.admit({}, "10.0.0.1").key == ""
    with pytest.raises(Unauthorized):
        g.admit({"x-api-key": "sy_revoked"}, "10.0.0.1")


def test_over_the_rate_is_429_with_a_retry_after_of_at_least_a_second() -> None:
    g, _, plain = gate()
    g.admit({"x-api-key": plain}, None)  # burst 1
    with pytest.raises(RateLimited) as info:
        g.admit({"x-api-key": plain}, None)
    assert REST[info.value.kind] == 429 and int(info.value.headers["Retry-After"]) >= 1
    assert "plain" in info.value.message and plain not in info.value.message


def test_revoking_a_key_takes_effect_at_the_next_sync_and_unchanged_keys_keep_their_buckets() -> None:
    g, gold, plain = gate()
    g.admit({"x-api-key": plain}, None)
    g.set_keys([(digest(plain), LiveKey("plain", 5, 1, frozenset()))])  # gold revoked
    with pytest.raises(Unauthorized):
        g.admit({"x-api-key": gold}, None)
    with pytest.raises(RateLimited):  # same limits: the bucket was kept, so no fresh burst
        g.admit({"x-api-key": plain}, None)


def test_rates_are_shared_between_a_hosts_workers() -> None:
    g = AccessGate(ServeSettings(workers=2))
    secret = new_secret()
    g.set_keys([(digest(secret), LiveKey("k", 10, 4, frozenset()))])
    g.admit({"x-api-key": secret}, None)
    bucket = g._buckets["k"]
    assert (bucket.rate, bucket.burst) == (5, 2)


def test_the_fleets_live_workers_share_a_key_and_a_change_keeps_the_tokens() -> None:
    g = AccessGate(ServeSettings(workers=1, ip_rate=8, ip_burst=8))
    secret = new_secret()
    g.set_keys([(digest(secret), LiveKey("k", 10, 8, frozenset()))])
    g.admit({"x-api-key": secret}, None)
    g.admit({}, "1.2.3.4")
    g.share_among(4)  # two replicas of two workers
    bucket, ip = g._buckets["k"], g._ips["1.2.3.4"]
    assert (bucket.rate, bucket.burst, bucket.tokens) == (2.5, 2, 2) and (ip.rate, ip.burst) == (2, 2)
    g.set_keys([(digest(secret), LiveKey("k", 10, 8, frozenset()))])  # a sync keeps the shared bucket
    assert g._buckets["k"] is bucket
    g.share_among(2)  # a replica died: the survivors take its part, without a refill
    assert (bucket.rate, bucket.burst, bucket.tokens) == (5, 4, 2)
    g.share_among(0)  # a count of nobody (this worker not yet counted) is treated as this worker alone
    assert g.share == 1.0


def test_pinning_with_a_key_needs_the_pin_scope() -> None:
    g, gold, plain = gate()
    assert g.pin_for(g.admit({"x-api-key": gold}, None), "digits:v2") == "digits:v2"
    with pytest.raises(Forbidden, match="'pin' scope"):
        g.pin_for(g.admit({"x-api-key": plain}, None), "digits:v2")
    assert g.pin_for(g.admit({}, None), "digits:v2") == "digits:v2"  # keys off: as documented before


def test_per_ip_limit_keys_on_the_peer_and_trusts_forwarded_for_only_from_proxies() -> None:
    g = AccessGate(ServeSettings(ip_rate=1, ip_burst=1, trusted_proxies=["10.0.0.0/8"]))
    assert g.client_ip("203.0.113.9", "1.2.3.4") == "203.0.113.9"  # not a proxy: its header is not believed
    assert g.client_ip("10.0.0.2", "1.2.3.4, 10.0.0.7") == "1.2.3.4"  # nearest hop that is not a proxy
    g.admit({}, "203.0.113.9")
    with pytest.raises(RateLimited, match="SWITCHYARD_IP_RATE"):
        g.admit({"x-forwarded-for": "5.5.5.5"}, "203.0.113.9")  # a spoofed header does not buy a new bucket
    g.admit({"x-forwarded-for": "1.2.3.4"}, "10.0.0.2")


def test_the_ip_table_is_a_bounded_lru() -> None:
    g = AccessGate(ServeSettings(ip_rate=1, ip_burst=1, ip_table_size=100))
    for i in range(1000):
        g.admit({}, f"198.51.{i // 250}.{i % 250}")
    assert len(g._ips) == 100
    assert "198.51.3.249" in g._ips and "198.51.0.0" not in g._ips  # the newest stay, the oldest went


def test_admission_caps_requests_and_bytes_in_flight_and_frees_them_on_error() -> None:
    adm = Admission(max_requests=2, max_bytes=1000)
    with adm.hold(600):
        with pytest.raises(TooBusy, match="SWITCHYARD_MAX_INFLIGHT_BYTES"), adm.hold(600):
            pass
        with adm.hold(300), pytest.raises(TooBusy, match="SWITCHYARD_MAX_CONCURRENCY"), adm.hold(1):
            pass
    with pytest.raises(ValueError), adm.hold(2000):  # one request alone may exceed the byte cap
        raise ValueError
    assert (adm.requests, adm.bytes) == (0, 0)

"""Pure unit tests of key layout and argument validation (no etcd)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from etcdroute.errors import InvalidArgumentError
from etcdroute.keys import (
    MAX_UID_BYTES,
    Keyspace,
    check_name,
    check_pod_id,
    check_uid,
    decode_uid,
    encode_uid,
)
from etcdroute.models import RoutingState

KS = Keyspace("etcdroute", "ns")


@pytest.mark.parametrize(
    "uid",
    [
        "",
        "a\x00b",
        "tab\there",
        "\x7f",
        "c1\x85",
        "csi\x9b",
        "x" * (MAX_UID_BYTES + 1),
        "\ud800",
        5,
        None,
        b"raw",
    ],
)
def test_bad_uid_names_the_argument(uid: object) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        check_uid(uid)
    assert info.value.argument == "uid"
    assert "uid" in str(info.value)


@pytest.mark.parametrize("pod_id", [-1, True, 1.5, "3", 10**10, None])
def test_bad_pod_id(pod_id: object) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        check_pod_id(pod_id)
    assert info.value.argument == "pod_id"


@pytest.mark.parametrize(
    "name",
    ["", "a/b", "..", "a..b", ".hidden", "x" * 64, "sp ace", "ü", 3, "ns\n"],
)
def test_bad_names(name: object) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        check_name("service", name)
    assert info.value.argument == "service"


@pytest.mark.parametrize(
    "prefix", ["", "/abs", "a//b", "a/../b", "a/./b", "ns/"]
)
def test_bad_prefix(prefix: str) -> None:
    with pytest.raises(InvalidArgumentError):
        Keyspace(prefix, "ns")


@pytest.mark.parametrize(
    "uid", ["/", "..", ".", "../../pods/game/1", "a/b", "%2F"]
)
def test_path_like_uids_stay_one_segment(uid: str) -> None:
    key = KS.link_key("game", uid)
    segment = key[len(KS.links_prefix("game")) :]
    assert "/" not in segment
    assert segment not in (".", "..")
    assert KS.uid_from_link_key("game", key) == uid


@given(
    st.text(min_size=1, max_size=200).filter(
        lambda s: all(ord(c) >= 0x20 and ord(c) != 0x7F for c in s)
    )
)
def test_uid_encoding_round_trips_and_is_injective(uid: str) -> None:
    try:
        check_uid(uid)
    except InvalidArgumentError:
        return  # lone surrogates are refused, tested above
    segment = encode_uid(uid)
    assert "/" not in segment
    assert decode_uid(segment) == uid


def test_distinct_uids_get_distinct_keys() -> None:
    uids = ["a", "A", "a/b", "a%2Fb", "..", "%2E%2E", "a b", "a+b"]
    keys = {KS.link_key("game", uid) for uid in uids}
    assert len(keys) == len(uids)


def test_pod_keys_sort_by_pod_id() -> None:
    keys = [KS.pod_key("game", pod) for pod in (2, 10, 1)]
    assert sorted(keys) == [KS.pod_key("game", p) for p in (1, 2, 10)]


def test_routing_state_parse() -> None:
    assert RoutingState.parse("Draining") is RoutingState.DRAINING
    assert RoutingState.parse(RoutingState.OFFLINE) is RoutingState.OFFLINE
    with pytest.raises(InvalidArgumentError) as info:
        RoutingState.parse("sleeping")
    assert info.value.argument == "routing_state"


def test_planted_link_keys_are_reported_as_corrupt() -> None:
    from etcdroute.errors import CorruptValueError

    for segment in ("%FF", "%2f", "a/b"):
        with pytest.raises(CorruptValueError):
            KS.uid_from_link_key("game", KS.links_prefix("game") + segment)


def test_ipv6_endpoint_keeps_its_brackets() -> None:
    from etcdroute.store import _channel_target, parse_endpoints

    assert _channel_target(parse_endpoints("[::1]:2379")) == "[::1]:2379"
    assert parse_endpoints(["http://h1:1", "h2:2"]) == [("h1", 1), ("h2", 2)]
    with pytest.raises(InvalidArgumentError) as info:
        parse_endpoints(123)  # type: ignore[arg-type]
    assert info.value.argument == "endpoints"

"""Config errors name the file, the key and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from qkmsd.config import ConfigError, config_from_mapping, load_config, parse_host_port

SOURCE = Path("/etc/qkms/qkmsd.toml")


def base(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "node": {"id": "KME_A", "state_dir": "/var/lib/qkms"},
        "tls": {"ca": "ca.pem", "cert": "a.pem", "key": "a.key"},
        "listen": {"peer": "127.0.0.1:7001", "admin_socket": "/run/qkms/admin.sock"},
        "peers": {"KME_B": {"address": "127.0.0.1:7002"}},
        "links": {
            "A~B": {"peer": "KME_B", "driver": "paired", "params": {"seed": "s" * 32}},
        },
    }
    config.update(overrides)
    return config


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(data, source=SOURCE)
    return str(info.value)


def test_a_valid_config_resolves_paths_against_its_directory() -> None:
    config = config_from_mapping(base(), source=SOURCE)
    assert config.node_id == "KME_A"
    assert config.ca == Path("/etc/qkms/ca.pem")
    assert config.keystore_path == Path("/var/lib/qkms/keystore.sqlite")
    assert config.links["A~B"].params.seed == "s" * 32
    assert config.link_end("A~B").peer_node == "KME_B"


def test_unknown_driver_names_the_link_and_the_known_drivers() -> None:
    data = base(links={"A~B": {"peer": "KME_B", "driver": "bb48"}})
    message = error_of(data)
    assert message.startswith("config /etc/qkms/qkmsd.toml: [links.A~B] driver 'bb48' unknown")
    assert "known: " in message and "paired" in message


def test_bad_driver_parameter_names_the_parameter() -> None:
    data = base(links={"A~B": {"peer": "KME_B", "driver": "paired", "params": {"seed": "short"}}})
    assert "seed" in error_of(data)


def test_link_to_an_unconfigured_peer_says_how_to_fix_it() -> None:
    data = base(links={"A~C": {"peer": "KME_C", "driver": "paired", "params": {"seed": "s" * 32}}})
    assert error_of(data).endswith("'KME_C' is not in [peers] (known: KME_B); add [peers.KME_C]")


def test_wrong_type_names_section_and_key() -> None:
    assert error_of(base(sync={"timeout_s": "soon"})) == (
        "config /etc/qkms/qkmsd.toml: [sync] timeout_s: expected `float`, got `str`"
    )


def test_unknown_key_is_refused_not_ignored() -> None:
    data = base()
    data["node"] = {**data["node"], "colour": "blue"}
    assert error_of(data) == "config /etc/qkms/qkmsd.toml: [node]: unknown key `colour`"


def test_missing_section_is_named() -> None:
    data = base()
    del data["node"]
    assert "missing required key `node`" in error_of(data)


@pytest.mark.parametrize("address", ["localhost", "127.0.0.1:99999", "[::1:7001", ":7001"])
def test_bad_addresses_are_refused(address: str) -> None:
    assert "[peers.KME_B] address" in error_of(base(peers={"KME_B": {"address": address}}))


def test_ipv6_and_names_parse() -> None:
    assert str(parse_host_port("[::1]:7001")) == "[::1]:7001"
    assert parse_host_port("kme-b.example.net:7001").host == "kme-b.example.net"


def test_a_node_cannot_peer_with_itself() -> None:
    assert "is this node itself" in error_of(base(peers={"KME_A": {"address": "127.0.0.1:1"}}))


def test_timeout_must_cover_two_heartbeats() -> None:
    assert "twice heartbeat_s" in error_of(base(sync={"timeout_s": 5.0, "heartbeat_s": 5.0}))


def test_file_errors_are_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[node\nid=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_driver_file_parameters_are_relative_to_the_config_file() -> None:
    data = base(
        links={
            "A~B": {
                "peer": "KME_B",
                "driver": "etsi014",
                "params": {
                    "url": "https://127.0.0.1:8443",
                    "ca": "device/ca.pem",
                    "cert": "device/kms.pem",
                    "key": "/abs/kms.key",
                    "role": "master",
                    "peer_sae": "b_sae",
                },
            }
        }
    )
    params = config_from_mapping(data, source=SOURCE).links["A~B"].params
    assert (params.ca, params.cert, params.key) == (
        "/etc/qkms/device/ca.pem",
        "/etc/qkms/device/kms.pem",
        "/abs/kms.key",
    )


def test_supply_stock_keys_defaults_to_32_and_a_pair_may_turn_it_off() -> None:
    saes = {"SAE_A": {"kme": "KME_A"}, "SAE_B": {"kme": "KME_B"}}
    pair = {"master": "SAE_A", "slave": "SAE_B", "stock_keys": 0}
    config = config_from_mapping(base(saes=saes, supply={"pairs": [pair]}), source=SOURCE)
    assert config.policy_for("SAE_B", "SAE_A").stock_keys == 32
    assert config.policy_for("SAE_A", "SAE_B").stock_keys == 0


def test_supply_retain_ended_s_defaults_to_a_day_and_must_be_positive() -> None:
    assert config_from_mapping(base(), source=SOURCE).supply.retain_ended_s == 86_400.0
    hour = config_from_mapping(base(supply={"retain_ended_s": 3600}), source=SOURCE)
    assert hour.supply.retain_ended_s == 3600.0
    assert "[supply] retain_ended_s" in error_of(base(supply={"retain_ended_s": 0}))


def test_supply_stock_keys_out_of_range_names_the_key() -> None:
    message = error_of(base(supply={"default": {"stock_keys": -1}}))
    assert "[supply.default] stock_keys" in message


def test_connection_caps_default_per_listener_and_can_be_set() -> None:
    config = config_from_mapping(
        base(api={"max_connections": 100, "max_connections_per_source": 10}), source=SOURCE
    )
    assert (config.api.max_connections, config.api.max_connections_per_source) == (100, 10)
    assert config.api.handshake_timeout_s == config.peer.handshake_timeout_s == 10.0
    assert (config.peer.max_connections, config.peer.max_connections_per_source) == (256, 64)


def test_the_api_request_and_idle_time_outs_default_and_can_be_set() -> None:
    config = config_from_mapping(base(), source=SOURCE)
    assert (config.api.request_timeout_s, config.api.idle_timeout_s) == (10.0, 60.0)
    config = config_from_mapping(
        base(api={"request_timeout_s": 2.5, "idle_timeout_s": 30}), source=SOURCE
    )
    assert (config.api.request_timeout_s, config.api.idle_timeout_s) == (2.5, 30.0)
    assert "[api] request_timeout_s" in error_of(base(api={"request_timeout_s": 0}))


def test_a_per_source_cap_above_the_listener_cap_names_the_key() -> None:
    data = base(peer={"max_connections": 8, "max_connections_per_source": 9})
    assert error_of(data).endswith(
        "[peer] max_connections_per_source: must be at most max_connections"
    )


def relay(**pool: Any) -> dict[str, Any]:
    """A config with an end-to-end pool with KME_C (a direct peer)."""
    peers = {"KME_B": {"address": "127.0.0.1:7002"}, "KME_C": {"address": "127.0.0.1:7003"}}
    return base(peers=peers, relay={"low_bits": 100, "high_bits": 200, "pools": {"KME_C": pool}})


def test_an_end_to_end_pool_takes_the_default_watermarks_or_its_own() -> None:
    default = config_from_mapping(relay(), source=SOURCE).relay_pools["KME_A~KME_C"]
    own = config_from_mapping(relay(low_bits=10, high_bits=20), source=SOURCE)
    assert (default.low_bits, default.high_bits) == (100, 200)
    assert (own.relay_pools["KME_A~KME_C"].low_bits, own.relay_pools["KME_A~KME_C"].high_bits) == (
        10,
        20,
    )


@pytest.mark.parametrize(
    ("pool", "message"),
    [
        ({"low_bits": 300}, "[relay.pools.KME_C] low_bits: must be at most high_bits"),
        ({"route": ["KME_B", "KME_B"]}, "names a node twice"),
        ({"route": ["KME_C"]}, "names the intermediate nodes only"),
        ({"paths": 2, "spread": True}, "[relay.pools.KME_C] spread:"),
    ],
    ids=["watermarks", "route repeats a node", "route names an end", "spread and split"],
)
def test_a_bad_end_to_end_pool_is_refused_with_its_reason(
    pool: dict[str, Any], message: str
) -> None:
    assert message in error_of(relay(**pool))


def test_an_end_to_end_pool_needs_a_direct_peer() -> None:
    data = base(relay={"pools": {"KME_Z": {}}})
    assert "[relay.pools.KME_Z] 'KME_Z' is not in [peers]" in error_of(data)


def test_alarms_default_and_metrics_listen_is_optional() -> None:
    config = config_from_mapping(base(), source=SOURCE)
    assert config.alarms.qber_max == 0.11 and config.alarms.hold_down_s == 60.0
    assert str(config.alarms.action("qber-high")) == "stop-link"
    assert config.metrics_listen is None
    assert config.alarm_history_path == Path("/var/lib/qkms/alarms.sqlite")
    listen = {"peer": "127.0.0.1:7001", "admin_socket": "/a.sock", "metrics": "127.0.0.1:9464"}
    config = config_from_mapping(base(listen=listen), source=SOURCE)
    assert str(config.metrics_listen) == "127.0.0.1:9464"


def test_a_bad_metrics_address_names_the_key() -> None:
    listen = {"peer": "127.0.0.1:7001", "admin_socket": "/a.sock", "metrics": "nowhere"}
    assert "[listen] metrics:" in error_of(base(listen=listen))


def test_alarm_actions_may_be_changed_per_code() -> None:
    alarms = {"qber_clear": "operator", "actions": {"qber-high": "notify", "pool-low": "none"}}
    config = config_from_mapping(base(alarms=alarms), source=SOURCE)
    assert str(config.alarms.action("qber-high")) == "notify"
    assert str(config.alarms.action("pool-low")) == "none"
    assert config.alarms.qber_clear == "operator"


@pytest.mark.parametrize(
    ("actions", "expected"),
    [
        ({"qber-hi": "notify"}, "[alarms.actions] qber-hi: unknown disruption code (known: "),
        ({"qber-high": "page"}, "action 'page' unknown (known for qber-high: none, notify, rout"),
        ({"peer-down": "stop-link"}, "'stop-link' is not available for this code (use: none, n"),
        ({"peer-down": "route-down"}, "'route-down' is not available for this code (use: no"),
    ],
)
def test_bad_alarm_actions_name_the_code_and_the_choices(
    actions: dict[str, str], expected: str
) -> None:
    assert expected in error_of(base(alarms={"actions": actions}))


@pytest.mark.parametrize(
    ("key", "value"),
    [("qber_max", 0.0), ("qber_max", 0.7), ("hold_down_s", -1.0), ("history_max", 1),
     ("cert_warn_days", 0), ("qber_clear", "never"), ("interval_s", 0.0)],
)  # fmt: skip
def test_out_of_range_alarm_settings_name_the_key(key: str, value: object) -> None:
    assert f"[alarms] {key}:" in error_of(base(alarms={key: value}))


def test_silence_shorter_than_two_heartbeats_is_refused_with_the_fix() -> None:
    error = error_of(base(sync={"heartbeat_s": 0.5, "silence_s": 0.75}))
    assert "[sync] silence_s" in error and "two heartbeats" in error


def test_a_config_that_sets_only_heartbeat_s_gets_four_heartbeats_of_silence() -> None:
    sync = config_from_mapping(base(sync={"heartbeat_s": 2.0}), source=SOURCE).sync
    assert sync.silence == 8.0


def test_silence_defaults_to_one_second_with_four_heartbeats_in_it() -> None:
    sync = config_from_mapping(base(), source=SOURCE).sync
    assert sync.silence == 1.0 and sync.heartbeat_s == 0.25
    assert sync.reconnect_max_s <= 2.0

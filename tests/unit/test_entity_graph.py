"""The entity graph's vocabulary: sync order, hard references, what an entity provides, cycles."""

from __future__ import annotations

import uuid

from edge_sync.common.entity_graph import (
    BY_FIELD,
    BY_TYPE,
    KINDS,
    NULL_ID,
    RULE_CHAIN_INPUT_NODE,
    Ref,
    find_cycle,
    provides,
    references,
    relation_key,
)

A = uuid.UUID("11111111-1111-1111-1111-111111111111")
B = uuid.UUID("22222222-2222-2222-2222-222222222222")
C = uuid.UUID("33333333-3333-3333-3333-333333333333")


def typed(kind: str, value: uuid.UUID) -> dict[str, str]:
    return {"entityType": kind, "id": str(value)}


def test_full_sync_order_is_thingsboards() -> None:
    order = [k.entity_type for k in sorted(KINDS, key=lambda k: k.sync_rank)]
    assert order == [
        "TENANT", "QUEUE", "RULE_CHAIN", "RULE_CHAIN_METADATA", "USER", "USER_CREDENTIALS",
        "WIDGET_TYPE", "WIDGETS_BUNDLE", "CUSTOMER", "DASHBOARD", "DEVICE_PROFILE",
        "ASSET_PROFILE", "DEVICE", "DEVICE_CREDENTIALS", "ASSET", "ENTITY_VIEW", "RELATION"]
    assert len({k.sync_rank for k in KINDS}) == len(KINDS)
    assert BY_FIELD["dashboardUpdateMsg"].entity_type == "DASHBOARD"
    assert BY_TYPE["RELATION"].has_id_halves is False


def test_every_reference_comes_earlier_in_the_sync_order() -> None:
    """A full sync in rank order never sends an entity before the kinds it references."""
    rank = {k.entity_type: k.sync_rank for k in KINDS}
    rank["WIDGET_TYPE_FQN"] = rank["WIDGET_TYPE"]
    samples = {
        "DEVICE": {"deviceProfileId": typed("DEVICE_PROFILE", A)},
        "ASSET": {"assetProfileId": typed("ASSET_PROFILE", A)},
        "ENTITY_VIEW": {"entityId": typed("DEVICE", A)},
        "RULE_CHAIN_METADATA": {"ruleChainId": typed("RULE_CHAIN", A)},
        "DASHBOARD": {"configuration": {"widgets": {"w": {"typeFullFqn": "tenant.gauge"}}}},
        "DEVICE_CREDENTIALS": {"deviceId": typed("DEVICE", A)},
        "USER_CREDENTIALS": {"userId": typed("USER", A)},
        "RELATION": {"from": typed("ASSET", A), "to": typed("DEVICE", B)},
    }
    for kind, body in samples.items():
        refs = references(kind, body)
        assert refs, kind
        assert all(rank[r.kind] < rank[kind] for r in refs), (kind, refs)


def test_device_references_its_profile_but_not_its_customer() -> None:
    body = {"id": typed("DEVICE", A), "deviceProfileId": typed("DEVICE_PROFILE", B),
            "customerId": typed("CUSTOMER", C)}
    assert references("DEVICE", body) == [Ref("DEVICE_PROFILE", str(B))]


def test_null_and_nil_ids_are_no_references() -> None:
    for nothing in (NULL_ID, uuid.UUID(int=0)):
        assert references("DEVICE", {"deviceProfileId": typed("DEVICE_PROFILE", nothing)}) == []
    assert references("DEVICE", {"deviceProfileId": {"entityType": "DEVICE_PROFILE",
                                                      "id": "not-a-uuid"}}) == []
    assert references("DEVICE", {}) == []


def test_dashboard_waits_for_tenant_widget_types_only() -> None:
    """A dashboard names a tenant type as \"tenant.\" + its fqn (ThingsBoard's UI)."""
    config = {"widgets": {
        "a": {"typeFullFqn": "tenant.boiler_gauge"},
        "b": {"typeFullFqn": "system.cards.value_card"},
        "c": {"typeFullFqn": "tenant.boiler_gauge"},
        "d": {"bundleAlias": "old", "typeAlias": "style"},
    }}
    assert references("DASHBOARD", {"configuration": config}) == [
        Ref("WIDGET_TYPE_FQN", "boiler_gauge")]
    assert references("DASHBOARD", {"configuration": {"widgets": [
        {"typeFullFqn": "tenant.plant.x"}, {"typeFullFqn": "tenant."}]}}) == [
        Ref("WIDGET_TYPE_FQN", "plant.x")]
    assert references("DASHBOARD", {"configuration": None}) == []


def test_widget_type_provides_its_id_and_fqn() -> None:
    assert provides("WIDGET_TYPE", A, {"fqn": "boiler_gauge"}) == [
        Ref("WIDGET_TYPE", str(A)), Ref("WIDGET_TYPE_FQN", "boiler_gauge")]
    assert provides("ASSET", A, {"name": "hall"}) == [Ref("ASSET", str(A))]


def test_rule_chain_metadata_references_its_chain_and_the_chains_it_forwards_to() -> None:
    body = {"ruleChainId": typed("RULE_CHAIN", A), "nodes": [
        {"type": RULE_CHAIN_INPUT_NODE, "configuration": {"ruleChainId": str(B)}},
        {"type": "org.thingsboard.rule.engine.filter.TbJsFilterNode", "configuration": {}},
        {"type": RULE_CHAIN_INPUT_NODE, "configuration": {"ruleChainId": "garbage"}},
    ]}
    assert references("RULE_CHAIN_METADATA", body) == [
        Ref("RULE_CHAIN", str(A)), Ref("RULE_CHAIN", str(B))]


def test_relation_key_and_references() -> None:
    body = {"from": typed("ASSET", A), "to": typed("ASSET", B), "type": "Contains"}
    assert relation_key(body) == (Ref("ASSET", str(A)), Ref("ASSET", str(B)), "Contains", "COMMON")
    assert relation_key({"from": typed("ASSET", A)}) is None
    assert references("RELATION", body) == [Ref("ASSET", str(A)), Ref("ASSET", str(B))]


def test_find_cycle_names_the_path() -> None:
    a, b, c = Ref("RULE_CHAIN", "a"), Ref("RULE_CHAIN", "b"), Ref("RULE_CHAIN", "c")
    graph = {a: [b], b: [c], c: [a]}
    assert find_cycle(a, lambda r: graph.get(r, [])) == [a, b, c, a]
    assert find_cycle(a, lambda r: {a: [b], b: [c]}.get(r, [])) is None
    diamond = {a: [b, c], b: [c], c: []}
    assert find_cycle(a, lambda r: diamond.get(r, [])) is None
    assert find_cycle(b, lambda r: graph.get(r, [])) == [b, c, a, b]


def test_find_cycle_does_not_follow_relations() -> None:
    a, rel = Ref("ASSET", "a"), Ref("RELATION", "r")
    assert find_cycle(a, lambda r: {a: [rel], rel: [a]}.get(r, [])) is None


def test_user_credentials_reference_their_user_typed_or_bare() -> None:
    assert references("USER_CREDENTIALS", {"userId": typed("USER", A)}) == [Ref("USER", str(A))]
    assert references("USER_CREDENTIALS", {"userId": str(A)}) == [Ref("USER", str(A))]


def test_rule_chain_metadata_whose_nodes_are_not_a_list_references_only_its_chain() -> None:
    for nodes in (5, "x", {"type": RULE_CHAIN_INPUT_NODE}, None):
        assert references("RULE_CHAIN_METADATA", {"ruleChainId": typed("RULE_CHAIN", A),
                                                  "nodes": nodes}) == [Ref("RULE_CHAIN", str(A))]
